//! Typed `provider` sections of every provider, and their checks.
//!
//! The common keys (`type`, `use_internal_ips`) are read by the core; each struct here
//! reads its provider's own keys. Keys a struct does not know are kept (CloudTik has
//! many provider keys; a config written for it must still load), but the known ones must
//! have the right types, and the required ones must be present.

use std::collections::BTreeMap;

use cloudtik_core::config::{ClusterConfig, ConfigLoader, ProviderSection};
use cloudtik_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `provider` of the virtual provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VirtualProviderConfig {
    /// The node image (built locally when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Map head ports to host ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_port_mapping: Option<bool>,
    /// First host port of the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mapping_base: Option<u16>,
    /// Keep data disks after a node is terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent_data_volumes: Option<bool>,
    /// The Docker Engine socket: a path or `unix:///path` (default: `DOCKER_HOST` when it
    /// is a unix URI, else `/var/run/docker.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_socket: Option<String>,
    /// The provider's state folder (default `~/.cloudtik/virtual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// The subnet of the workspace's Docker network, as a CIDR (Docker picks one when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Seconds a node gets to stop before it is killed (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    /// Mount the Docker socket into head containers so the head's controller can start
    /// workers (default true; see the virtual provider's docs for the security trade-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_docker_socket: Option<bool>,
    /// A host `cloudtik-node` binary to mount read-only into every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_binary: Option<String>,
    /// How many containers are created or removed at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// The host folder of the package cache shared by every node of every cluster
    /// (default `~/.cloudtik/package-cache`); `""` turns the sharing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_cache: Option<String>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One host of the local provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalNode {
    /// The host's address.
    pub ip: String,
    /// A public address, if different.
    #[serde(default)]
    pub external_ip: Option<String>,
    /// Its instance type name (a key of `instance_types`).
    #[serde(default)]
    pub instance_type: Option<String>,
}

/// `provider` of the local provider.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct LocalProviderConfig {
    /// The hosts.
    pub nodes: Vec<LocalNode>,
    /// Instance types: name -> resources (`CPU`, `memory`, `GPU`).
    #[serde(default)]
    pub instance_types: BTreeMap<String, Map<String, Value>>,
    /// This machine's own address, if it is one of the nodes.
    #[serde(default)]
    pub local_ip: Option<String>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `provider` of AWS.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct AwsProviderConfig {
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// Zones to place nodes in, comma-separated.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Use internal addresses only (the common key, also read by the core). With it, the
    /// workspace uses the working VPC (`use_working_vpc`, default true) or, with
    /// `use_working_vpc: false`, a VPC of its own peered with the working VPC.
    #[serde(default)]
    pub use_internal_ips: Option<bool>,
    /// Use the VPC of the working machine (default true with `use_internal_ips`).
    #[serde(default)]
    pub use_working_vpc: Option<bool>,
    /// The working VPC's id, for `use_working_vpc` and for VPC peering; when unset it is
    /// the VPC of the EC2 instance the CLI runs on, found by its address. An extension of
    /// this SDK (CloudTik always looks the machine up), so a workspace can be made from
    /// outside EC2.
    #[serde(default)]
    pub working_vpc_id: Option<String>,
    /// With VPC peering: let the working VPC's range through the workspace's security
    /// group (default true).
    #[serde(default)]
    pub peering_firewall_allow_working_subnet: Option<bool>,
    /// With VPC peering and `peering_firewall_allow_working_subnet`: SSH (tcp/22) only
    /// from the working VPC (default true); false opens every TCP port to it.
    #[serde(default)]
    pub peering_firewall_allow_ssh_only: Option<bool>,
    /// Keep stopped nodes for reuse instead of terminating them.
    #[serde(default)]
    pub cache_stopped_nodes: Option<bool>,
    /// Prefer spot instances, falling back to on-demand.
    #[serde(default)]
    pub prefer_spot_node: Option<bool>,
    /// CIDRs allowed to reach SSH.
    #[serde(default)]
    pub allowed_ssh_sources: Vec<String>,
    /// Create an S3 bucket with the workspace.
    #[serde(default)]
    pub managed_cloud_storage: Option<bool>,
    /// An EC2-compatible endpoint (moto, LocalStack) instead of AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The accounts whose images are searched for the default image of node types
    /// without `ImageId` (`Owners` of `DescribeImages`: account ids, or `self`, `amazon`,
    /// `aws-marketplace`). Not a CloudTik key (CloudTik searches Amazon's and Canonical's
    /// images); default: Canonical.
    #[serde(default)]
    pub image_owners: Option<Vec<String>>,
    /// The name pattern (`name` filter of `DescribeImages`, `*` and `?` wildcards) of the
    /// default image. Not a CloudTik key; default: Ubuntu 22.04 server for amd64.
    #[serde(default)]
    pub image_name: Option<String>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `provider` of GCP.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct GcpProviderConfig {
    /// The region, e.g. `us-central1`.
    pub region: String,
    /// The zone, e.g. `us-central1-a`.
    pub availability_zone: String,
    /// The project id.
    pub project_id: String,
    /// Prefer spot VMs.
    #[serde(default)]
    pub prefer_spot_node: Option<bool>,
    /// CIDRs allowed to reach SSH.
    #[serde(default)]
    pub allowed_ssh_sources: Vec<String>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `provider` of Azure.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct AzureProviderConfig {
    /// The location, e.g. `westus2`.
    pub location: String,
    /// The subscription id.
    pub subscription_id: String,
    /// The resource group (derived from the workspace name when unset).
    #[serde(default)]
    pub resource_group: Option<String>,
    /// Prefer spot VMs.
    #[serde(default)]
    pub prefer_spot_node: Option<bool>,
    /// CIDRs allowed to reach SSH.
    #[serde(default)]
    pub allowed_ssh_sources: Vec<String>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn check_cidrs(list: &[String]) -> Result<()> {
    for (i, c) in list.iter().enumerate() {
        let ok = match c.split_once('/') {
            Some((ip, bits)) => {
                ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
            }
            None => c.parse::<std::net::IpAddr>().is_ok(),
        };
        if !ok {
            return Err(Error::config(
                format!("provider.allowed_ssh_sources[{i}]"),
                format!("`{c}` is not an address range: expected CIDR such as 10.0.0.0/16"),
            ));
        }
    }
    Ok(())
}

/// Checks the virtual provider's keys.
pub fn validate_virtual(p: &ProviderSection) -> Result<()> {
    let c: VirtualProviderConfig = p.parse()?;
    if let Some(subnet) = &c.subnet {
        let ok = subnet.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::Ipv4Addr>().is_ok()
                && bits.parse::<u8>().is_ok_and(|b| (8..=30).contains(&b))
        });
        if !ok {
            return Err(Error::config(
                "provider.subnet",
                format!("`{subnet}` is not an IPv4 range from /8 to /30, such as 10.77.0.0/24"),
            ));
        }
    }
    if c.max_concurrency == Some(0) {
        return Err(Error::config("provider.max_concurrency", "must be at least 1"));
    }
    Ok(())
}

/// Checks the local provider's keys: at least one host, unique addresses, known types.
pub fn validate_local(p: &ProviderSection) -> Result<()> {
    let c: LocalProviderConfig = p.parse()?;
    if c.nodes.is_empty() {
        return Err(Error::config(
            "provider.nodes",
            "list at least one host: `- ip: 10.0.0.1`",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if n.ip.parse::<std::net::IpAddr>().is_err() && n.ip.trim().is_empty() {
            return Err(Error::config(
                format!("provider.nodes[{i}].ip"),
                "must be an address or host name",
            ));
        }
        if !seen.insert(&n.ip) {
            return Err(Error::config(
                format!("provider.nodes[{i}].ip"),
                format!("`{}` is listed twice", n.ip),
            ));
        }
    }
    Ok(())
}

/// What keeps a local cluster config from being used, as CloudTik finds it when the
/// cluster starts: instance types (of hosts and of node types) that
/// `provider.instance_types` does not define (`default`, this machine's type, needs no
/// definition).
pub fn local_warnings(config: &ClusterConfig) -> Vec<Error> {
    let Ok(c) = config.provider.parse::<LocalProviderConfig>() else {
        return Vec::new();
    };
    let defined = |t: &str| t == "default" || c.instance_types.contains_key(t);
    let known = || {
        let mut names: Vec<&str> = c.instance_types.keys().map(String::as_str).collect();
        names.insert(0, "default");
        names.join(", ")
    };
    let mut out = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if let Some(t) = &n.instance_type
            && !defined(t)
        {
            out.push(Error::config(
                format!("provider.nodes[{i}].instance_type"),
                format!(
                    "instance type `{t}` is not defined in provider.instance_types ({})",
                    known()
                ),
            ));
        }
    }
    for (name, t) in &config.available_node_types {
        if let Some(Value::String(it)) = t.node_config.get("instance_type")
            && !defined(it)
        {
            let path = cloudtik_core::config::YamlPath::root()
                .key("available_node_types")
                .key(name)
                .key("node_config")
                .key("instance_type");
            out.push(Error::config(
                path.to_string(),
                format!(
                    "instance type `{it}` is not defined in provider.instance_types ({})",
                    known()
                ),
            ));
        }
    }
    out
}

/// Checks AWS keys.
pub fn validate_aws(p: &ProviderSection) -> Result<()> {
    let c: AwsProviderConfig = p.parse()?;
    if c.region.trim().is_empty() {
        return Err(Error::config(
            "provider.region",
            "must name a region, e.g. us-east-1",
        ));
    }
    if let Some(id) = &c.working_vpc_id
        && !(id.starts_with("vpc-") && id.len() > 4 && id[4..].chars().all(|ch| ch.is_ascii_alphanumeric()))
    {
        return Err(Error::config(
            "provider.working_vpc_id",
            format!("`{id}` is not a VPC id: expected vpc- and letters or digits, e.g. vpc-0a1b2c3d"),
        ));
    }
    if let Some(owners) = &c.image_owners {
        if owners.is_empty() {
            return Err(Error::config(
                "provider.image_owners",
                "list at least one owner (an account id, `self`, `amazon` or `aws-marketplace`), or leave it out",
            ));
        }
        if let Some(i) = owners.iter().position(|o| o.trim().is_empty()) {
            return Err(Error::config(
                format!("provider.image_owners[{i}]"),
                "must be an account id, `self`, `amazon` or `aws-marketplace`",
            ));
        }
    }
    if c.image_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(Error::config(
            "provider.image_name",
            "must be an image name pattern, e.g. ubuntu/images/hvm-ssd*/ubuntu-*-24.04-amd64-server-*",
        ));
    }
    check_cidrs(&c.allowed_ssh_sources)
}

/// Checks GCP keys.
pub fn validate_gcp(p: &ProviderSection) -> Result<()> {
    let c: GcpProviderConfig = p.parse()?;
    if !c.availability_zone.starts_with(&c.region) {
        return Err(Error::config(
            "provider.availability_zone",
            format!("zone `{}` is not in region `{}`", c.availability_zone, c.region),
        ));
    }
    check_cidrs(&c.allowed_ssh_sources)
}

/// Checks Azure keys.
pub fn validate_azure(p: &ProviderSection) -> Result<()> {
    let c: AzureProviderConfig = p.parse()?;
    check_cidrs(&c.allowed_ssh_sources)
}

/// Registers the checks of every provider on a loader.
///
/// With the `virtual` feature, virtual configs are also checked against this machine's
/// size ([`crate::virtual_provider::capacity_warnings`]): a node type that can never
/// launch is refused by `load_cluster_*`.
pub fn register_validators(loader: ConfigLoader) -> ConfigLoader {
    #[cfg(feature = "virtual")]
    let loader = loader.with_provider_warnings("virtual", crate::virtual_provider::capacity_warnings);
    loader
        .with_provider_validator("virtual", validate_virtual)
        .with_provider_validator("local", validate_local)
        .with_provider_warnings("local", local_warnings)
        .with_provider_validator("aws", validate_aws)
        .with_provider_validator("gcp", validate_gcp)
        .with_provider_validator("azure", validate_azure)
}
