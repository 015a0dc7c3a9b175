//! [`AwsClusterBootstrap`]: a cluster config's node types tied to its workspace (CloudTik's
//! `bootstrap_aws`), and the cluster's own EC2 key pair.
//!
//! `cloudtik workspace create` makes a VPC, subnets, a security group and the head and
//! worker instance profiles; a cluster config names the workspace (`workspace_name`) but
//! its node types do not name those resources. Bootstrap looks the workspace up (it must
//! be complete) and fills each node type's `node_config`:
//!
//! | key | head node type | worker node types |
//! |---|---|---|
//! | `SubnetIds` | the public subnets (the private ones with `provider.use_internal_ips`) | the private subnets |
//! | `SecurityGroupIds` | `[<workspace security group>]` | the same |
//! | `IamInstanceProfile` | `{Arn: <head instance profile>}` | `{Arn: <worker instance profile>}` |
//! | `KeyName` | the cluster's key pair, imported into EC2 | the same |
//!
//! # Keys the user set are kept
//!
//! A key the `node_config` already has (not null, not an empty list or string) is left as
//! written: `SubnetId` or `SubnetIds` keep the subnets, `SecurityGroupIds`,
//! `IamInstanceProfile` and `KeyName` are kept. CloudTik overwrites `SubnetIds` (and the
//! profiles) with the workspace's; here the user's choice wins, so a node type can be
//! pinned to one zone's subnet, because a silent overwrite hides the user's intent. What
//! CloudTik's overwrite guarantees (every node in the workspace's VPC, where its security
//! group applies) is checked instead: a subnet or security group the user set must be in
//! the workspace's VPC, or bootstrap fails with an error at its
//! `available_node_types.<type>.node_config` path. A `KeyName` the user set must name a
//! key pair EC2 has in the region.
//!
//! Subnets are ordered by availability zone, then name; the private subnet in the zone of
//! the first public subnet comes first (as CloudTik), so the head and the first workers
//! share a zone. The order is deterministic, so a bootstrapped config (and the launch
//! hash computed from it) is the same on every run.
//!
//! # Key pair
//!
//! Node types without `KeyName` get the cluster's key pair: the public key at
//! `auth.ssh_public_key` (the cluster's ed25519 key that `ClusterDir::prepare_auth`
//! makes) imported with `ImportKeyPair` as [`key_pair_name`] `cloudtik-<cluster>-<12 hex
//! digits of the key's SHA-256>`, tagged `cloudtik-cluster-name`. A key pair of that name
//! that EC2 already has is used when it holds the same public key (compared from
//! `DescribeKeyPairs` with `IncludePublicKey`), so a second bootstrap imports nothing; one
//! with another key is a [`Conflict`](ErrorKind::Conflict) error. EC2 imports RSA and
//! ED25519 keys only. The key pair is kept when the cluster stops (it costs nothing and a
//! restart uses it again); delete it with `aws ec2 delete-key-pair`.
//!
//! # Calls
//!
//! `workspace_info` of [`AwsWorkspaceProvider`] (one lookup of the workspace's
//! resources), `DescribeSubnets` / `DescribeSecurityGroups` only for subnets and groups
//! the user set, one `DescribeKeyPairs` (plus one `ImportKeyPair` the first time), and the
//! node types' resources ([`AwsNodeProvider::bootstrap_resources`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{KeyPairInfo, ResourceType, SecurityGroup, Subnet, Tag, TagSpecification};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use cloudtik_core::config::ClusterConfig;
use cloudtik_core::node::tags;
use cloudtik_core::{Error, ErrorKind, Result, WorkspaceProvider};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::call::{Listed, filter};
use super::errors::ec2_code;
use super::{AwsNodeProvider, AwsSettings, AwsWorkspaceOptions, AwsWorkspaceProvider};
use crate::provider_config::AwsProviderConfig;

/// The operation named in bootstrap errors.
const OP: &str = "bootstrap_cluster";
/// The longest EC2 key pair name.
const MAX_KEY_NAME_LEN: usize = 255;
/// Hex digits of the key's SHA-256 in its key pair name.
const KEY_FINGERPRINT_DIGITS: usize = 12;
/// The public key types EC2 imports.
const IMPORTABLE_KEY_TYPES: [&str; 2] = ["ssh-ed25519", "ssh-rsa"];

/// What a cluster takes from its workspace: read from
/// [`AwsWorkspaceProvider::workspace_info`] by [`AwsClusterBootstrap::workspace_resources`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkspaceResources {
    /// The workspace's name.
    pub workspace: String,
    /// The VPC every node runs in.
    pub vpc_id: String,
    /// The public subnets' ids, in launch order (see the [module docs](self)).
    pub public_subnets: Vec<String>,
    /// The private subnets' ids, in launch order.
    pub private_subnets: Vec<String>,
    /// The workspace's security group.
    pub security_group_id: String,
    /// The ARN of the head's instance profile.
    pub head_instance_profile_arn: String,
    /// The ARN of the workers' instance profile.
    pub worker_instance_profile_arn: String,
}

impl WorkspaceResources {
    /// Reads the answer of `workspace_info`; `None` when a piece is not in it.
    pub fn from_info(info: &Value) -> Option<Self> {
        let text = |key: &str| {
            info.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Some(WorkspaceResources {
            workspace: text("workspace_name")?,
            vpc_id: text("vpc_id")?,
            public_subnets: ordered_subnets(info.get("public_subnets")?, None),
            private_subnets: ordered_subnets(
                info.get("private_subnets")?,
                first_zone(info.get("public_subnets")?).as_deref(),
            ),
            security_group_id: text("security_group_id")?,
            head_instance_profile_arn: text("head_instance_profile_arn")?,
            worker_instance_profile_arn: text("worker_instance_profile_arn")?,
        })
        .filter(|r| !r.public_subnets.is_empty() && !r.private_subnets.is_empty())
    }

    /// Fills the node types of `config` from the workspace (no call is made): the keys
    /// of the table in the [module docs](self) but `KeyName`, each only where the
    /// `node_config` does not set it.
    pub fn fill(&self, config: &mut ClusterConfig) {
        let use_internal_ips = config.provider.use_internal_ips == Some(true);
        let head_type = config.head_node_type.clone();
        for (name, node_type) in &mut config.available_node_types {
            let head = *name == head_type;
            let c = &mut node_type.node_config;
            if !is_set(c, "SubnetIds") && !is_set(c, "SubnetId") {
                let subnets = if head && !use_internal_ips {
                    &self.public_subnets
                } else {
                    &self.private_subnets
                };
                c.insert("SubnetIds".into(), json!(subnets));
            }
            if !is_set(c, "SecurityGroupIds") {
                c.insert("SecurityGroupIds".into(), json!([self.security_group_id]));
            }
            if !is_set(c, "IamInstanceProfile") {
                let arn = if head {
                    &self.head_instance_profile_arn
                } else {
                    &self.worker_instance_profile_arn
                };
                c.insert("IamInstanceProfile".into(), json!({ "Arn": arn }));
            }
        }
    }
}

/// Whether `key` of a `node_config` is set: present, and not null, `""` or `[]`.
fn is_set(node_config: &Map<String, Value>, key: &str) -> bool {
    match node_config.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// The zone of the first subnet of a `workspace_info` subnet list, in launch order.
fn first_zone(subnets: &Value) -> Option<String> {
    let mut list = subnet_list(subnets);
    list.sort();
    list.into_iter().next().map(|(zone, _, _)| zone)
}

/// `(zone, name, id)` of each subnet of a `workspace_info` subnet list.
fn subnet_list(subnets: &Value) -> Vec<(String, String, String)> {
    let field = |s: &Value, k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    subnets
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| !field(s, "id").is_empty())
                .map(|s| (field(s, "availability_zone"), field(s, "name"), field(s, "id")))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of a `workspace_info` subnet list by zone, then name; the first subnet in
/// `first_zone` moved to the front.
fn ordered_subnets(subnets: &Value, first_zone: Option<&str>) -> Vec<String> {
    let mut list = subnet_list(subnets);
    list.sort();
    if let Some(zone) = first_zone
        && let Some(i) = list.iter().position(|(z, _, _)| z == zone)
    {
        let s = list.remove(i);
        list.insert(0, s);
    }
    list.into_iter().map(|(_, _, id)| id).collect()
}

/// An OpenSSH public key line (`<type> <base64> [comment]`) read into its type and base64
/// body, with the body decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublicKey {
    key_type: String,
    base64: String,
    blob: Vec<u8>,
}

impl PublicKey {
    /// Parses a public key line; `None` when it is not `<type> <base64>`.
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let key_type = fields.next()?.to_string();
        let base64 = fields.next()?.to_string();
        let blob = STANDARD.decode(&base64).ok()?;
        Some(PublicKey {
            key_type,
            base64,
            blob,
        })
    }

    /// `<type> <base64>`, what is imported.
    fn material(&self) -> String {
        format!("{} {}", self.key_type, self.base64)
    }

    /// OpenSSH's SHA-256 fingerprint, base64 without padding (what `ssh-keygen -l`
    /// prints after `SHA256:`).
    fn sha256_fingerprint(&self) -> String {
        STANDARD_NO_PAD.encode(Sha256::digest(&self.blob))
    }

    /// Whether EC2's `KeyFingerprint` is this key's: the SHA-256 form EC2 gives imported
    /// ED25519 keys, with or without `SHA256:` and padding.
    fn matches_fingerprint(&self, fingerprint: &str) -> bool {
        let f = fingerprint.trim();
        let f = f.strip_prefix("SHA256:").unwrap_or(f).trim_end_matches('=');
        f == self.sha256_fingerprint()
    }
}

/// The name of the key pair bootstrap imports for `cluster`'s public key (an OpenSSH
/// line): `cloudtik-<cluster>-<the first 12 hex digits of the SHA-256 of the key>`, with
/// characters other than ASCII letters, digits, `.`, `_` and `-` in the cluster name
/// replaced by `-`, and the cluster name cut so the whole is at most EC2's 255
/// characters. The same cluster and key give the same name; another key, another name.
pub fn key_pair_name(cluster: &str, public_key: &str) -> Result<String> {
    let key = PublicKey::parse(public_key).ok_or_else(|| {
        Error::config(
            "auth.ssh_public_key",
            "is not an OpenSSH public key (`ssh-ed25519 AAAA... comment`)",
        )
    })?;
    Ok(name_for(cluster, &key))
}

fn name_for(cluster: &str, key: &PublicKey) -> String {
    let digest = hex::encode(Sha256::digest(&key.blob));
    let fingerprint = &digest[..KEY_FINGERPRINT_DIGITS];
    let room = MAX_KEY_NAME_LEN - "cloudtik-".len() - 1 - KEY_FINGERPRINT_DIGITS;
    let cluster: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    format!("cloudtik-{cluster}-{fingerprint}")
}

/// Ties a cluster config's node types to its workspace: see the [module docs](self).
///
/// ```no_run
/// # async fn demo() -> cloudtik_core::Result<()> {
/// use cloudtik_providers::aws::AwsClusterBootstrap;
///
/// let mut config = cloudtik_providers::config_loader().load_cluster_file("cluster.yaml")?;
/// AwsClusterBootstrap::from_cluster_config(&config).await?.bootstrap(&mut config).await?;
/// println!("{:?}", config.available_node_types[&config.head_node_type].node_config);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AwsClusterBootstrap {
    workspace: AwsWorkspaceProvider,
    nodes: AwsNodeProvider,
}

impl AwsClusterBootstrap {
    /// A bootstrap from the workspace and the cluster's node provider (the EC2 calls are
    /// the node provider's, with its retries).
    pub fn new(workspace: AwsWorkspaceProvider, nodes: AwsNodeProvider) -> Self {
        AwsClusterBootstrap { workspace, nodes }
    }

    /// A bootstrap for the cluster of `config` (`workspace_name`, `cluster_name` and the
    /// `provider` section), with credentials from the standard AWS chain.
    pub async fn from_cluster_config(config: &ClusterConfig) -> Result<Self> {
        let aws: AwsProviderConfig = config.provider.parse()?;
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(aws.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(config, &sdk_config)
    }

    /// A bootstrap for the cluster of `config` from an SDK config the caller loaded
    /// (credentials, HTTP client); region and endpoint come from `provider`.
    pub fn from_sdk_config(config: &ClusterConfig, sdk_config: &aws_config::SdkConfig) -> Result<Self> {
        let aws: AwsProviderConfig = config.provider.parse()?;
        if config.workspace_name.trim().is_empty() {
            return Err(Error::config(
                "workspace_name",
                "an aws cluster runs in a workspace: set workspace_name (and create it with \
                 `cloudtik workspace create <file>`)",
            ));
        }
        let settings = AwsSettings::from_provider_config(&aws);
        let workspace = AwsWorkspaceProvider::from_sdk_config(
            &config.workspace_name,
            sdk_config,
            settings.clone(),
            AwsWorkspaceOptions::from_provider_config(&aws),
        )?;
        let nodes = AwsNodeProvider::from_sdk_config(&config.cluster_name, sdk_config, settings)?;
        Ok(Self::new(workspace, nodes))
    }

    /// The workspace's resources. A workspace that does not exist, or lacks a piece, is
    /// a [`NotFound`](ErrorKind::NotFound) error that says to run `cloudtik workspace
    /// create`.
    pub async fn workspace_resources(&self) -> Result<WorkspaceResources> {
        let ws = self.workspace.workspace_name();
        let region = &self.workspace.settings().region;
        let info = match self.workspace.workspace_info().await {
            Ok(info) => info,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "workspace {ws} is missing in region {region}: run `cloudtik workspace create <file>` \
                         with a workspace config named {ws} first"
                    ),
                )
                .with_operation(OP)
                .with_context("workspace", ws)
                .with_source(e));
            }
            Err(e) => return Err(e.with_context("workspace", ws)),
        };
        let missing: Vec<&str> = info
            .get("missing")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let resources = WorkspaceResources::from_info(&info);
        match resources {
            Some(r) if missing.is_empty() => Ok(r),
            _ => {
                let what = if missing.is_empty() {
                    "its subnets, security group or instance profiles".to_string()
                } else {
                    missing.join(", ")
                };
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "workspace {ws} is incomplete in region {region} (missing: {what}): run `cloudtik \
                         workspace create <file>` to finish it"
                    ),
                )
                .with_operation(OP)
                .with_context("workspace", ws))
            }
        }
    }

    /// Fills `config`'s node types from the workspace, imports the cluster's key pair
    /// when a node type has no `KeyName`, and fills the node types' `resources` (see the
    /// [module docs](self)). Running it again on the same config gives the same config.
    pub async fn bootstrap(&self, config: &mut ClusterConfig) -> Result<()> {
        let resources = self.workspace_resources().await?;
        self.check_user_network(config, &resources).await?;
        resources.fill(config);
        self.configure_key_pair(config).await?;
        self.nodes.bootstrap_resources(config).await
    }

    /// Checks that subnets and security groups set in node configs are in the
    /// workspace's VPC.
    async fn check_user_network(&self, config: &ClusterConfig, ws: &WorkspaceResources) -> Result<()> {
        // id -> the first node_config path that names it.
        let mut subnets: BTreeMap<String, String> = BTreeMap::new();
        let mut groups: BTreeMap<String, String> = BTreeMap::new();
        for (name, t) in &config.available_node_types {
            let c = &t.node_config;
            let path = |key: &str| format!("available_node_types.{name}.node_config.{key}");
            for key in ["SubnetId", "SubnetIds"] {
                for id in strings(c.get(key)) {
                    subnets.entry(id).or_insert_with(|| path(key));
                }
            }
            for id in strings(c.get("SecurityGroupIds")) {
                groups.entry(id).or_insert_with(|| path("SecurityGroupIds"));
            }
        }
        let region = &self.workspace.settings().region;
        let outside = |kind: &str, id: &str, vpc: Option<&str>, path: &str| {
            let message = match vpc {
                Some(vpc) => format!(
                    "{kind} {id} is in VPC {vpc}, not in the VPC {} of workspace {}: name one of the \
                     workspace's, or leave the key out to use the workspace's",
                    ws.vpc_id, ws.workspace
                ),
                None => format!("EC2 has no {kind} {id} in region {region}"),
            };
            Err(Error::config(path, message).with_operation(OP))
        };
        let subnet_vpcs = self.vpcs_of("subnet-id", &subnets, subnet_vpc).await?;
        let group_vpcs = self.vpcs_of("group-id", &groups, group_vpc).await?;
        for (kind, wanted, vpcs) in [
            ("subnet", &subnets, &subnet_vpcs),
            ("security group", &groups, &group_vpcs),
        ] {
            for (id, path) in wanted {
                match vpcs.get(id) {
                    Some(vpc) if *vpc == ws.vpc_id => {}
                    vpc => return outside(kind, id, vpc.map(String::as_str), path),
                }
            }
        }
        Ok(())
    }

    /// The VPC of each of `ids` (the keys) EC2 has, by id: one listing filtered on
    /// `filter_name`, none when `ids` is empty.
    async fn vpcs_of<T: Listed>(
        &self,
        filter_name: &str,
        ids: &BTreeMap<String, String>,
        id_and_vpc: fn(&T) -> Option<(&str, &str)>,
    ) -> Result<BTreeMap<String, String>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let found: Vec<T> = self
            .nodes
            .calls()
            .list(OP, vec![filter(filter_name, ids.keys().cloned())])
            .await?;
        Ok(found
            .iter()
            .filter_map(id_and_vpc)
            .map(|(id, vpc)| (id.to_string(), vpc.to_string()))
            .collect())
    }

    /// Sets `KeyName` on the node types without one (importing the cluster's key pair
    /// when EC2 lacks it), and checks that the key pairs the user named exist.
    async fn configure_key_pair(&self, config: &mut ClusterConfig) -> Result<()> {
        let mut user_keys: BTreeMap<String, String> = BTreeMap::new();
        let mut keyless = Vec::new();
        for (name, t) in &config.available_node_types {
            match t.node_config.get("KeyName") {
                Some(Value::String(k)) if !k.is_empty() => {
                    user_keys
                        .entry(k.clone())
                        .or_insert_with(|| format!("available_node_types.{name}.node_config.KeyName"));
                }
                _ => keyless.push(name.clone()),
            }
        }
        let ours = if keyless.is_empty() {
            None
        } else {
            let key = self.cluster_public_key(config, &keyless)?;
            Some((name_for(&config.cluster_name, &key), key))
        };
        let mut names: Vec<String> = user_keys.keys().cloned().collect();
        if let Some((name, _)) = &ours {
            names.push(name.clone());
        }
        if names.is_empty() {
            return Ok(());
        }
        let existing = self.describe_key_pairs(&names).await?;
        let region = &self.workspace.settings().region;
        if let Some((name, path)) = user_keys.iter().find(|(k, _)| !existing.contains_key(*k)) {
            return Err(Error::config(
                path,
                format!(
                    "EC2 has no key pair {name} in region {region}: import it, or leave KeyName out to use \
                     the cluster's key"
                ),
            )
            .with_operation(OP)
            .with_context("call", "DescribeKeyPairs"));
        }
        let Some((name, key)) = ours else {
            return Ok(());
        };
        match existing.get(&name) {
            Some(info) => self.check_same_key(config, &name, &key, info)?,
            None => self.import_key_pair(config, &name, &key).await?,
        }
        for node_type in &keyless {
            if let Some(t) = config.available_node_types.get_mut(node_type) {
                t.node_config
                    .insert("KeyName".into(), Value::String(name.clone()));
            }
        }
        Ok(())
    }

    /// The public key at `auth.ssh_public_key`, which node types `keyless` need.
    fn cluster_public_key(&self, config: &ClusterConfig, keyless: &[String]) -> Result<PublicKey> {
        let Some(path) = config.auth.ssh_public_key.as_deref() else {
            return Err(Error::config(
                "auth.ssh_public_key",
                format!(
                    "node type(s) {} have no node_config.KeyName, so the cluster's public key is imported \
                     into EC2: set auth.ssh_public_key to its file (`cloudtik` makes the cluster's key \
                     when auth.ssh_private_key is unset), or set KeyName on every node type",
                    keyless.join(", ")
                ),
            )
            .with_operation(OP));
        };
        let file = expand_home(path);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            Error::config(
                "auth.ssh_public_key",
                format!("cannot read the public key {}: {e:#}", file.display()),
            )
            .with_operation(OP)
        })?;
        let key = PublicKey::parse(&text).ok_or_else(|| {
            Error::config(
                "auth.ssh_public_key",
                format!(
                    "{} is not an OpenSSH public key (`ssh-ed25519 AAAA... comment`)",
                    file.display()
                ),
            )
            .with_operation(OP)
        })?;
        if !IMPORTABLE_KEY_TYPES.contains(&key.key_type.as_str()) {
            return Err(Error::config(
                "auth.ssh_public_key",
                format!(
                    "{} is a {} key; EC2 imports only ED25519 and RSA keys (or set KeyName on every node type)",
                    file.display(),
                    key.key_type
                ),
            )
            .with_operation(OP));
        }
        Ok(key)
    }

    /// The key pairs among `names` that EC2 has, by name, with their public keys.
    async fn describe_key_pairs(&self, names: &[String]) -> Result<BTreeMap<String, KeyPairInfo>> {
        let answer = self
            .nodes
            .call(OP, "DescribeKeyPairs", || {
                self.nodes
                    .ec2()
                    .describe_key_pairs()
                    .filters(filter("key-name", names.to_vec()))
                    .include_public_key(true)
                    .send()
            })
            .await?;
        Ok(answer
            .key_pairs()
            .iter()
            .filter_map(|k| Some((k.key_name()?.to_string(), k.clone())))
            .filter(|(name, _)| names.contains(name))
            .collect())
    }

    /// Checks that the key pair `name` EC2 has holds `key`.
    fn check_same_key(
        &self,
        config: &ClusterConfig,
        name: &str,
        key: &PublicKey,
        info: &KeyPairInfo,
    ) -> Result<()> {
        let same = match info.public_key().and_then(PublicKey::parse) {
            Some(theirs) => theirs.key_type == key.key_type && theirs.blob == key.blob,
            None => info.key_fingerprint().is_some_and(|f| key.matches_fingerprint(f)),
        };
        if same {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "EC2 key pair {name} in region {} holds another public key than auth.ssh_public_key ({}): \
                 delete it (`aws ec2 delete-key-pair --key-name {name}`) or set node_config.KeyName",
                self.workspace.settings().region,
                config.auth.ssh_public_key.as_deref().unwrap_or("")
            ),
        )
        .with_operation(OP)
        .with_context("call", "DescribeKeyPairs")
        .with_context("key_pair", name)
        .with_context("fingerprint", info.key_fingerprint().unwrap_or("none")))
    }

    /// Imports `key` as the key pair `name`, tagged with the cluster; a concurrent import
    /// of the same key is fine.
    async fn import_key_pair(&self, config: &ClusterConfig, name: &str, key: &PublicKey) -> Result<()> {
        let material = Blob::new(key.material().into_bytes());
        let imported = self
            .nodes
            .call(OP, "ImportKeyPair", || {
                self.nodes
                    .ec2()
                    .import_key_pair()
                    .key_name(name)
                    .public_key_material(material.clone())
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::KeyPair)
                            .tags(
                                Tag::builder()
                                    .key(tags::CLUSTER_NAME)
                                    .value(&config.cluster_name)
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
            })
            .await;
        match imported {
            Ok(_) => {
                tracing::info!(key_pair = %name, cluster = %config.cluster_name, "imported the cluster's key pair into EC2");
                Ok(())
            }
            Err(e) if ec2_code(&e) == Some("InvalidKeyPair.Duplicate") => {
                let existing = self.describe_key_pairs(&[name.to_string()]).await?;
                match existing.get(name) {
                    Some(info) => self.check_same_key(config, name, key, info),
                    None => Err(e.with_context("key_pair", name)),
                }
            }
            Err(e) => Err(e.with_context("key_pair", name)),
        }
    }
}

/// The strings of a node_config value: one string, or a list of them.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A subnet's id and VPC.
fn subnet_vpc(s: &Subnet) -> Option<(&str, &str)> {
    Some((s.subnet_id()?, s.vpc_id()?))
}

/// A security group's id and VPC.
fn group_vpc(g: &SecurityGroup) -> Option<(&str, &str)> {
    Some((g.group_id()?, g.vpc_id()?))
}

/// `~/` at the start of a path as the home folder.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII80T4WbiRbvsCITP1J26Ole8qs4CbWbc1DXxNfD3g4V cloudtik-cluster";

    fn config(yaml_node_types: &str, use_internal_ips: bool) -> ClusterConfig {
        let text = format!(
            "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: aws\n  region: us-east-1\n  \
             use_internal_ips: {use_internal_ips}\nhead_node_type: head\navailable_node_types:\n{yaml_node_types}"
        );
        crate::config_loader()
            .load_cluster_str("test.yaml", &text)
            .unwrap()
    }

    fn resources() -> WorkspaceResources {
        WorkspaceResources::from_info(&json!({
            "workspace_name": "ws",
            "vpc_id": "vpc-1",
            "public_subnets": [
                {"id": "subnet-pub-b", "name": "cloudtik-ws-public-subnet-1", "availability_zone": "us-east-1b"},
                {"id": "subnet-pub-a", "name": "cloudtik-ws-public-subnet-0", "availability_zone": "us-east-1a"},
            ],
            "private_subnets": [
                {"id": "subnet-priv-c", "name": "cloudtik-ws-private-subnet-0", "availability_zone": "us-east-1c"},
                {"id": "subnet-priv-a", "name": "cloudtik-ws-private-subnet-1", "availability_zone": "us-east-1a"},
                {"id": "subnet-priv-b", "name": "cloudtik-ws-private-subnet-2", "availability_zone": "us-east-1b"},
            ],
            "security_group_id": "sg-1",
            "head_instance_profile_arn": "arn:head",
            "worker_instance_profile_arn": "arn:worker",
            "missing": [],
        }))
        .unwrap()
    }

    #[test]
    fn subnets_are_ordered_by_zone_with_the_heads_zone_first() {
        let r = resources();
        assert_eq!(r.public_subnets, ["subnet-pub-a", "subnet-pub-b"]);
        assert_eq!(
            r.private_subnets,
            ["subnet-priv-a", "subnet-priv-b", "subnet-priv-c"]
        );
        let mut info = json!({"workspace_name": "ws", "vpc_id": "v", "security_group_id": "s",
            "head_instance_profile_arn": "h", "worker_instance_profile_arn": "w",
            "public_subnets": [{"id": "p", "availability_zone": "z2"}],
            "private_subnets": [{"id": "q1", "availability_zone": "z1"}, {"id": "q2", "availability_zone": "z2"}]});
        assert_eq!(
            WorkspaceResources::from_info(&info).unwrap().private_subnets,
            ["q2", "q1"]
        );
        info["security_group_id"] = Value::Null;
        assert_eq!(WorkspaceResources::from_info(&info), None);
    }

    #[test]
    fn fill_sets_what_is_missing_and_keeps_what_the_user_set() {
        let mut c = config(
            "  head:\n    node_config: {InstanceType: t3.micro}\n\
             \x20 worker:\n    node_config: {InstanceType: t3.micro}\n\
             \x20 pinned:\n    node_config: {InstanceType: t3.micro, SubnetId: subnet-mine, \
             SecurityGroupIds: [sg-mine], IamInstanceProfile: {Name: mine}, SubnetIds: null}\n",
            false,
        );
        let r = resources();
        r.fill(&mut c);
        let nc = |t: &str| Value::Object(c.available_node_types[t].node_config.clone());
        assert_eq!(nc("head")["SubnetIds"], json!(["subnet-pub-a", "subnet-pub-b"]));
        assert_eq!(nc("head")["SecurityGroupIds"], json!(["sg-1"]));
        assert_eq!(nc("head")["IamInstanceProfile"], json!({"Arn": "arn:head"}));
        assert_eq!(
            nc("worker")["SubnetIds"],
            json!(["subnet-priv-a", "subnet-priv-b", "subnet-priv-c"])
        );
        assert_eq!(nc("worker")["IamInstanceProfile"], json!({"Arn": "arn:worker"}));
        assert_eq!(nc("pinned")["SubnetId"], json!("subnet-mine"));
        assert_eq!(
            nc("pinned")["SubnetIds"],
            Value::Null,
            "null is unset, and a SubnetId is set"
        );
        assert_eq!(nc("pinned")["SecurityGroupIds"], json!(["sg-mine"]));
        assert_eq!(nc("pinned")["IamInstanceProfile"], json!({"Name": "mine"}));

        let before = c.clone();
        r.fill(&mut c);
        assert_eq!(c, before, "filling twice changes nothing");

        let mut internal = config("  head:\n    node_config: {InstanceType: t3.micro}\n", true);
        r.fill(&mut internal);
        assert_eq!(
            internal.available_node_types["head"].node_config["SubnetIds"],
            json!(["subnet-priv-a", "subnet-priv-b", "subnet-priv-c"])
        );
    }

    #[test]
    fn key_pair_names_are_deterministic_and_valid() {
        let a = key_pair_name("spark", ED25519).unwrap();
        assert!(a.starts_with("cloudtik-spark-"), "{a}");
        assert_eq!(a.len(), "cloudtik-spark-".len() + 12);
        assert_eq!(key_pair_name("spark", ED25519).unwrap(), a);
        let without_comment: String = ED25519.rsplit_once(' ').unwrap().0.to_string();
        assert_eq!(
            key_pair_name("spark", &without_comment).unwrap(),
            a,
            "the comment is not the key"
        );
        let odd = key_pair_name("my cluster/ü", ED25519).unwrap();
        assert!(odd.starts_with("cloudtik-my-cluster--"), "{odd}");
        assert!(odd.is_ascii());
        let long = key_pair_name(&"x".repeat(400), ED25519).unwrap();
        assert_eq!(long.len(), 255);
        assert!(key_pair_name("c", "not a key").is_err());
    }

    #[test]
    fn image_keys_come_from_the_provider_section() {
        let c = config("  head:\n    node_config: {InstanceType: t3.micro}\n", false);
        let aws: AwsProviderConfig = c.provider.parse().unwrap();
        let settings = AwsSettings::from_provider_config(&aws);
        assert_eq!(settings.image_owners, [super::super::CANONICAL_OWNER]);
        assert_eq!(settings.image_name, super::super::DEFAULT_IMAGE_NAME);
        let text = "cluster_name: c\nworkspace_name: ws\nprovider:\n  type: aws\n  region: us-east-1\n  \
                    image_owners: [self, '123456789012']\n  image_name: 'my-image-*'\nhead_node_type: head\n\
                    available_node_types:\n  head:\n    node_config: {InstanceType: t3.micro}\n";
        let c = crate::config_loader()
            .load_cluster_str("test.yaml", text)
            .unwrap();
        let settings = AwsSettings::from_provider_config(&c.provider.parse().unwrap());
        assert_eq!(settings.image_owners, ["self", "123456789012"]);
        assert_eq!(settings.image_name, "my-image-*");
        let bad = text.replace("[self, '123456789012']", "[]");
        let e = crate::config_loader()
            .load_cluster_str("test.yaml", &bad)
            .unwrap_err();
        assert!(e.to_string().contains("provider.image_owners"), "{e:#}");
    }

    #[test]
    fn fingerprints_match_openssh() {
        let key = PublicKey::parse(ED25519).unwrap();
        // What `ssh-keygen -lf` prints for the key above.
        let openssh = "hkte1Seo71ImB4TQyLTzozijmBbbfaUQScngie69GAQ";
        assert_eq!(key.sha256_fingerprint(), openssh);
        assert!(key.matches_fingerprint(&format!("SHA256:{openssh}")));
        assert!(key.matches_fingerprint(&format!("{openssh}=")));
        assert!(!key.matches_fingerprint("ab:cd"));
    }
}
