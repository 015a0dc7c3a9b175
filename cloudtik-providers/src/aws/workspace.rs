//! [`AwsWorkspaceProvider`]: a workspace as a VPC and its network pieces on EC2.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Address, AttributeBooleanValue, DomainType, Filter, Instance, InternetGateway, IpPermission, IpRange,
    Ipv6Range, NatGateway, NatGatewayState, PrefixListId, ResourceType, Route, RouteState, RouteTable,
    SecurityGroup, Subnet, Tag, TagSpecification, UserIdGroupPair, Vpc, VpcCidrBlockStateCode, VpcEndpoint,
    VpcEndpointType, VpcPeeringConnection, VpcPeeringConnectionStateReasonCode,
};
use cloudtik_core::config::WorkspaceConfig;
use cloudtik_core::node::tags;
use cloudtik_core::{
    DeleteWorkspaceOptions, Error, ErrorKind, Result, WorkspaceExistence, WorkspaceProvider,
};
use serde_json::json;

use super::errors::{classify_sdk_error, classify_service_error, ec2_code, is_rate_limited};
use super::{AwsSettings, PROVIDER_TYPE, ec2_client, iam_client, s3_client};

/// The tag every resource of a workspace carries: `cloudtik-workspace-name=<workspace>`.
const WORKSPACE_TAG: &str = tags::WORKSPACE_NAME;
/// On the VPC: `created` when the workspace created it (delete deletes it), `working`
/// when it is the caller's VPC (delete only removes the workspace's tags).
const VPC_ORIGIN_TAG: &str = "cloudtik-workspace-vpc";
/// The version of the workspace layout, on a created VPC.
const VERSION_TAG: &str = "cloudtik-workspace-version";
/// EC2's display name.
const NAME_TAG: &str = "Name";
/// The longest workspace name: AWS names are `cloudtik-<workspace>-...` (CloudTik's limit).
const MAX_NAME_LEN: usize = 31;
/// The default route of the route tables.
const ANYWHERE: &str = "0.0.0.0/0";
/// Size of every subnet the workspace creates.
const SUBNET_PREFIX: u8 = 24;
/// Who may assume the workspace's roles.
const EC2_TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
/// The managed policies of the head role (as CloudTik's).
const HEAD_POLICIES: [&str; 4] = [
    "arn:aws:iam::aws:policy/AmazonEC2FullAccess",
    "arn:aws:iam::aws:policy/AmazonS3FullAccess",
    "arn:aws:iam::aws:policy/IAMFullAccess",
    "arn:aws:iam::aws:policy/ElasticLoadBalancingFullAccess",
];
/// The managed policies of the worker role.
const WORKER_POLICIES: [&str; 3] = [
    "arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess",
    "arn:aws:iam::aws:policy/AmazonS3FullAccess",
    "arn:aws:iam::aws:policy/ElasticLoadBalancingFullAccess",
];
/// States of instances that keep a workspace in use.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Which VPC a workspace uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkspaceVpc {
    /// Create the VPC `cloudtik-<workspace>-vpc` (and delete it with the workspace).
    Create {
        /// Its IPv4 range, e.g. `10.0.0.0/16`.
        cidr: String,
    },
    /// Use an existing VPC (`provider.use_working_vpc`): it is tagged with the workspace
    /// but never deleted; its internet gateway is reused when it has one.
    Working {
        /// The VPC; `None` means the VPC of the EC2 instance this process runs on, found
        /// by this machine's private address.
        vpc_id: Option<String>,
    },
}

/// VPC peering between the workspace's own VPC and the working VPC (the VPC of the
/// machine that runs the CLI), so the working machine reaches the nodes by their
/// internal addresses: CloudTik's `use_internal_ips` with `use_working_vpc: false`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VpcPeering {
    /// The working VPC (`provider.working_vpc_id`); `None` means the VPC of the EC2
    /// instance this process runs on, found by this machine's private address (as
    /// CloudTik), or, once the workspace is peered, the VPC its peering connection
    /// comes from.
    pub working_vpc_id: Option<String>,
    /// Let the working VPC's range through the security group
    /// (`provider.peering_firewall_allow_working_subnet`, default true).
    pub allow_working_subnet: bool,
    /// With [`allow_working_subnet`](Self::allow_working_subnet): SSH (tcp/22) only
    /// (`provider.peering_firewall_allow_ssh_only`, default true); false allows every
    /// TCP port (0 to 65535).
    pub allow_ssh_only: bool,
}

impl Default for VpcPeering {
    fn default() -> Self {
        VpcPeering {
            working_vpc_id: None,
            allow_working_subnet: true,
            allow_ssh_only: true,
        }
    }
}

impl VpcPeering {
    /// Peering with the working VPC `vpc_id` (`None`: this machine's VPC), with the
    /// default firewall (SSH from the working VPC).
    pub fn new(vpc_id: Option<String>) -> Self {
        VpcPeering {
            working_vpc_id: vpc_id,
            ..VpcPeering::default()
        }
    }

    /// Sets what the security group lets in from the working VPC: nothing
    /// (`allow_working_subnet` false), SSH only, or every TCP port.
    #[must_use]
    pub fn with_firewall(mut self, allow_working_subnet: bool, allow_ssh_only: bool) -> Self {
        self.allow_working_subnet = allow_working_subnet;
        self.allow_ssh_only = allow_ssh_only;
        self
    }
}

/// The shape of an AWS workspace (what the `provider` section of a workspace config says).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsWorkspaceOptions {
    /// The VPC to create or use (default: create `10.0.0.0/16`).
    pub vpc: WorkspaceVpc,
    /// Zones for the subnets, used round-robin; empty means the region's available zones.
    pub availability_zones: Vec<String>,
    /// How many public subnets (default 1; at least 1, the NAT gateway lives there).
    pub public_subnets: usize,
    /// How many private subnets (default 2).
    pub private_subnets: usize,
    /// Address ranges (CIDR) allowed to reach SSH besides the VPC's own range.
    pub allowed_ssh_sources: Vec<String>,
    /// How long to wait for a NAT gateway to become available or deleted (default 10 min).
    pub nat_timeout: Duration,
    /// How long delete keeps retrying a deletion EC2 refuses with `DependencyViolation`
    /// while a dependency (a NAT gateway's network interface) goes away (default 5 min).
    pub dependency_timeout: Duration,
    /// The pause between two polls of a NAT gateway or a refused deletion (default 5 s).
    pub poll_interval: Duration,
    /// How long create waits after creating an instance profile, before EC2 accepts it
    /// in a launch (IAM is eventually consistent; default 15 s as CloudTik).
    pub iam_propagation_wait: Duration,
    /// Create the managed S3 bucket (`provider.managed_cloud_storage`; default false).
    pub managed_cloud_storage: bool,
    /// Peer the workspace's VPC with the working VPC (default none). Only with
    /// [`WorkspaceVpc::Create`]; the VPC's range is then chosen not to overlap the
    /// working VPC (see [`AwsWorkspaceProvider`]).
    pub peering: Option<VpcPeering>,
    /// How long create waits for a peering connection to become ready for acceptance and
    /// then active (default 2 min).
    pub peering_timeout: Duration,
}

impl Default for AwsWorkspaceOptions {
    fn default() -> Self {
        AwsWorkspaceOptions {
            vpc: WorkspaceVpc::Create {
                cidr: "10.0.0.0/16".to_string(),
            },
            availability_zones: Vec::new(),
            public_subnets: 1,
            private_subnets: 2,
            allowed_ssh_sources: Vec::new(),
            nat_timeout: Duration::from_secs(600),
            dependency_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(5),
            iam_propagation_wait: Duration::from_secs(15),
            managed_cloud_storage: false,
            peering: None,
            peering_timeout: Duration::from_secs(120),
        }
    }
}

impl AwsWorkspaceOptions {
    /// Options from the `provider` section of a workspace config: `use_internal_ips`,
    /// `use_working_vpc`, `working_vpc_id`, `peering_firewall_allow_working_subnet`,
    /// `peering_firewall_allow_ssh_only`, `availability_zone` (comma-separated),
    /// `allowed_ssh_sources` and `managed_cloud_storage`.
    ///
    /// As in CloudTik, `use_working_vpc` defaults to true with `use_internal_ips`, and
    /// `use_internal_ips` with `use_working_vpc: false` peers a VPC of the workspace's
    /// own with the working VPC. (`use_working_vpc: true` without `use_internal_ips`
    /// also uses the working VPC; CloudTik ignores it then.)
    pub fn from_provider_config(config: &crate::provider_config::AwsProviderConfig) -> Self {
        let mut options = AwsWorkspaceOptions::default();
        let internal = config.use_internal_ips == Some(true);
        if config.use_working_vpc.unwrap_or(internal) {
            options.vpc = WorkspaceVpc::Working {
                vpc_id: config.working_vpc_id.clone(),
            };
        } else if internal {
            options.peering = Some(VpcPeering::new(config.working_vpc_id.clone()).with_firewall(
                config.peering_firewall_allow_working_subnet.unwrap_or(true),
                config.peering_firewall_allow_ssh_only.unwrap_or(true),
            ));
        }
        if let Some(zones) = &config.availability_zone {
            options.availability_zones = zones
                .split(',')
                .map(str::trim)
                .filter(|z| !z.is_empty())
                .map(str::to_string)
                .collect();
        }
        options.allowed_ssh_sources = config.allowed_ssh_sources.clone();
        options.managed_cloud_storage = config.managed_cloud_storage == Some(true);
        options
    }

    /// Sets the VPC.
    #[must_use]
    pub fn with_vpc(mut self, vpc: WorkspaceVpc) -> Self {
        self.vpc = vpc;
        self
    }

    /// Sets the availability zones.
    #[must_use]
    pub fn with_availability_zones(mut self, zones: Vec<String>) -> Self {
        self.availability_zones = zones;
        self
    }

    /// Sets the numbers of public (at least 1) and private subnets.
    #[must_use]
    pub fn with_subnets(mut self, public: usize, private: usize) -> Self {
        self.public_subnets = public.max(1);
        self.private_subnets = private;
        self
    }

    /// Sets `allowed_ssh_sources`.
    #[must_use]
    pub fn with_allowed_ssh_sources(mut self, sources: Vec<String>) -> Self {
        self.allowed_ssh_sources = sources;
        self
    }

    /// Sets `managed_cloud_storage`.
    #[must_use]
    pub fn with_managed_cloud_storage(mut self, v: bool) -> Self {
        self.managed_cloud_storage = v;
        self
    }

    /// Sets VPC peering with the working VPC (`None`: no peering).
    #[must_use]
    pub fn with_peering(mut self, peering: Option<VpcPeering>) -> Self {
        self.peering = peering;
        self
    }

    /// Sets how long create waits for a peering connection to become active.
    #[must_use]
    pub fn with_peering_timeout(mut self, timeout: Duration) -> Self {
        self.peering_timeout = timeout;
        self
    }

    /// Sets the wait after an instance profile was created.
    #[must_use]
    pub fn with_iam_propagation_wait(mut self, wait: Duration) -> Self {
        self.iam_propagation_wait = wait;
        self
    }

    /// Sets the NAT gateway time-out, the dependency time-out and the poll interval.
    #[must_use]
    pub fn with_timeouts(mut self, nat: Duration, dependency: Duration, poll: Duration) -> Self {
        self.nat_timeout = nat;
        self.dependency_timeout = dependency;
        self.poll_interval = poll;
        self
    }
}

/// The pieces of a workspace, in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Piece {
    Vpc,
    PublicSubnets,
    PrivateSubnets,
    InternetGateway,
    PublicRouteTable,
    ElasticIp,
    NatGateway,
    PrivateRouteTable,
    S3Endpoint,
    SecurityGroup,
    VpcPeering,
    HeadRole,
    WorkerRole,
    ManagedStorage,
}

impl Piece {
    const ALL: [Piece; 14] = [
        Piece::Vpc,
        Piece::PublicSubnets,
        Piece::PrivateSubnets,
        Piece::InternetGateway,
        Piece::PublicRouteTable,
        Piece::ElasticIp,
        Piece::NatGateway,
        Piece::PrivateRouteTable,
        Piece::S3Endpoint,
        Piece::SecurityGroup,
        Piece::VpcPeering,
        Piece::HeadRole,
        Piece::WorkerRole,
        Piece::ManagedStorage,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Piece::Vpc => "vpc",
            Piece::PublicSubnets => "public-subnets",
            Piece::PrivateSubnets => "private-subnets",
            Piece::InternetGateway => "internet-gateway",
            Piece::PublicRouteTable => "public-route-table",
            Piece::ElasticIp => "elastic-ip",
            Piece::NatGateway => "nat-gateway",
            Piece::PrivateRouteTable => "private-route-table",
            Piece::S3Endpoint => "s3-endpoint",
            Piece::SecurityGroup => "security-group",
            Piece::VpcPeering => "vpc-peering",
            Piece::HeadRole => "head-role",
            Piece::WorkerRole => "worker-role",
            Piece::ManagedStorage => "managed-storage",
        }
    }
}

/// What of a workspace exists, as found by its tags.
#[derive(Debug, Default)]
struct Found {
    vpc: Option<Vpc>,
    subnets: Vec<Subnet>,
    /// Internet gateways tagged with the workspace, and (for a working VPC) the one
    /// attached to the VPC.
    gateways: Vec<InternetGateway>,
    route_tables: Vec<RouteTable>,
    addresses: Vec<Address>,
    /// NAT gateways that are pending or available.
    nat_gateways: Vec<NatGateway>,
    /// Endpoints that are not being deleted.
    endpoints: Vec<VpcEndpoint>,
    security_groups: Vec<SecurityGroup>,
    /// Peering connections tagged with the workspace, in any state (EC2 lists deleted
    /// ones for a while; their routes may be left behind).
    peerings: Vec<VpcPeeringConnection>,
    /// The route tables of the VPC the live peering connection comes from (the working
    /// VPC).
    working_tables: Vec<RouteTable>,
    head: IamFound,
    worker: IamFound,
    /// Whether the managed bucket exists.
    bucket: bool,
}

/// A role of the workspace and its instance profile, as found in IAM.
#[derive(Debug, Default)]
struct IamFound {
    role_arn: Option<String>,
    /// The managed policies attached to the role.
    policies: BTreeSet<String>,
    profile_arn: Option<String>,
    /// The roles in the instance profile.
    profile_roles: Vec<String>,
}

impl IamFound {
    fn exists(&self) -> bool {
        self.role_arn.is_some() || self.profile_arn.is_some()
    }
}

/// Which of the two roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoleKind {
    Head,
    Worker,
}

impl RoleKind {
    fn piece(self) -> Piece {
        match self {
            RoleKind::Head => Piece::HeadRole,
            RoleKind::Worker => Piece::WorkerRole,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RoleKind::Head => "head",
            RoleKind::Worker => "worker",
        }
    }

    fn policies(self) -> &'static [&'static str] {
        match self {
            RoleKind::Head => &HEAD_POLICIES,
            RoleKind::Worker => &WORKER_POLICIES,
        }
    }
}

/// The working VPC of a peering, as described by create and update.
#[derive(Debug)]
struct WorkingVpc {
    id: String,
    /// Its primary IPv4 range.
    cidr: String,
    /// Every IPv4 range associated with it, the primary one first.
    cidrs: Vec<String>,
    /// Its route tables.
    tables: Vec<RouteTable>,
}

impl WorkingVpc {
    /// The ranges a peered VPC must not overlap: the working VPC's own and the
    /// destinations its route tables send elsewhere (but the default route).
    fn used(&self) -> Vec<&str> {
        let mut used: Vec<&str> = self.cidrs.iter().map(String::as_str).collect();
        used.extend(
            self.tables
                .iter()
                .flat_map(|t| t.routes())
                .filter_map(Route::destination_cidr_block)
                .filter(|d| *d != ANYWHERE),
        );
        used
    }
}

/// A workspace's network on EC2, found and created by deterministic names and the tag
/// `cloudtik-workspace-name=<workspace>` (CloudTik's AWS workspace, reference §2).
///
/// # Create
///
/// Each step is get-or-create: it looks its resource up by tag and `Name` and creates
/// only what is missing, tagging it in the create call itself (`TagSpecifications`),
/// so a resource whose creation answer was lost is found by the next run. In order:
///
/// 1. **VPC** `cloudtik-<ws>-vpc` (DNS hostnames on), or with
///    [`WorkspaceVpc::Working`] the existing VPC, which is only tagged. With
///    [`AwsWorkspaceOptions::peering`] its range is the configured one (default
///    `10.0.0.0/16`) when that overlaps neither the working VPC's ranges nor the
///    destinations of the working VPC's routes, else the first such `10.X.0.0/16`.
/// 2. **Subnets**: `cloudtik-<ws>-public-subnet-<i>` (public addresses on launch) and
///    `cloudtik-<ws>-private-subnet-<i>`, each a free /24 of the VPC, round-robin across
///    the zones.
/// 3. **Internet gateway** `cloudtik-<ws>-internet-gateway`, attached (a working VPC's
///    existing gateway is reused).
/// 4. **Public route table** `cloudtik-<ws>-public-route-table`: `0.0.0.0/0` to the
///    internet gateway, associated with the public subnets.
/// 5. **Elastic IP** `cloudtik-<ws>-elastic-ip` for the NAT gateway.
/// 6. **NAT gateway** `cloudtik-<ws>-nat-gateway` in the first public subnet; create
///    waits until it is available.
/// 7. **Private route table** `cloudtik-<ws>-private-route-table`: `0.0.0.0/0` to the
///    NAT gateway, associated with the private subnets.
/// 8. **S3 gateway endpoint** `cloudtik-<ws>-vpc-endpoint-s3` on both route tables.
/// 9. **Security group** `cloudtik-<ws>`: all traffic from the group itself, SSH (tcp/22)
///    from the VPC's range and from `allowed_ssh_sources`, and with peering the working
///    VPC's range ([`VpcPeering::allow_working_subnet`]: SSH, or every TCP port without
///    [`VpcPeering::allow_ssh_only`]); other ingress rules are revoked.
/// 10. With [`AwsWorkspaceOptions::peering`] (`use_internal_ips` without a working VPC),
///     the **VPC peering connection** `cloudtik-<ws>-vpc-peering-connection` from the
///     working VPC ([`VpcPeering::working_vpc_id`], or the VPC of this machine) to the
///     workspace's VPC, accepted (create waits until it is active,
///     [`AwsWorkspaceOptions::peering_timeout`]); then routes through it: to the working
///     VPC's range in both route tables of the workspace, and to the workspace VPC's range
///     in every route table of the working VPC. A connection found waiting for acceptance
///     is accepted; a rejected, failed or expired one is replaced; a route of the same
///     destination that is a blackhole is replaced, one to another target is a conflict.
/// 11. **IAM roles** `cloudtik-<ws>-head-role` (EC2, S3, IAM and ELB full access) and
///     `cloudtik-<ws>-worker-role` (EC2 read-only, S3 and ELB full access), trusted by
///     EC2, each in its instance profile `cloudtik-<ws>-{head,worker}-profile`. IAM is
///     global: a workspace name is unique per account, not per region. After creating a
///     profile, create waits [`AwsWorkspaceOptions::iam_propagation_wait`].
/// 12. With [`AwsWorkspaceOptions::managed_cloud_storage`], the **S3 bucket**
///     `cloudtik-<ws>-<region>-default`, tagged with the workspace, encrypted (SSE-S3).
///
/// A failed step returns the error with the context `step` (the piece, as named by
/// [`workspace_existence`](WorkspaceProvider::workspace_existence)) and `resource` (its
/// name); the steps before it stay, and running create again continues. Creates are
/// retried only on rate limits (EC2 did not act); a transient failure ends the run, and
/// the next run finds by tag whatever the lost call did create.
///
/// # Existence, info, update
///
/// Existence lists the missing pieces in creation order: a route table counts only
/// with its default route and subnet associations, the internet gateway only when
/// attached, the peering (`vpc-peering`, only counted with peering) only when active,
/// from the working VPC, with its routes in both VPCs. Info gives the ids of
/// everything (`vpc_peering`: id, status, working VPC and its range). Update re-applies
/// the security group's ingress rules (only the difference is authorized or revoked).
///
/// # Delete
///
/// Refused with [`ErrorKind::Conflict`] while instances (pending, running, stopping or
/// stopped) are in the workspace's VPC (a working VPC: in its subnets) or carry the
/// workspace tag; the error names the clusters, and for stopped instances a cluster keeps
/// with `cache_stopped_nodes` it names them and says how to terminate them
/// ([`AwsNodeProvider::terminate_stopped_nodes`](super::AwsNodeProvider::terminate_stopped_nodes)).
/// Otherwise in reverse: the managed bucket (emptied first; only with
/// `delete_managed_storage`, else it is kept and the workspace stays incomplete),
/// instance profiles and roles (policies detached
/// first), the routes through the workspace's peering connections (in both VPCs, also
/// of connections already deleted) and the live connections, security group, S3
/// endpoint, private route
/// table, NAT gateway (waiting until deleted), elastic IP, public route table, internet
/// gateway (detach, delete), subnets, VPC (a working VPC only loses its tags). Missing
/// pieces are skipped, so delete can run again after a failure, and deleting a
/// workspace that does not exist succeeds.
///
/// # Not built
///
/// Extra `security_group.IpPermissions` and managed databases are not created. Peering
/// is within one account and region (no `PeerOwnerId`/`PeerRegion`), IPv4 only, and
/// update does not add or remove it (only its security group rule). The managed policy
/// ARNs are those of the `aws` partition (not China or GovCloud). Update creates the
/// managed bucket when the option is set, but never deletes it.
#[derive(Debug, Clone)]
pub struct AwsWorkspaceProvider {
    workspace: String,
    settings: AwsSettings,
    options: AwsWorkspaceOptions,
    client: Client,
    iam: aws_sdk_iam::Client,
    s3: aws_sdk_s3::Client,
}

/// Adds the step and resource to an error.
fn at(step: Piece, resource: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| {
        e.with_context("step", step.as_str())
            .with_context("resource", resource)
    }
}

impl AwsWorkspaceProvider {
    /// A provider for `workspace`, with credentials from the standard AWS chain and the
    /// region and endpoint of `settings`.
    pub async fn new(workspace: &str, settings: AwsSettings, options: AwsWorkspaceOptions) -> Result<Self> {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_sdk_config(workspace, &sdk_config, settings, options)
    }

    /// A provider for the workspace of a workspace config.
    pub async fn from_workspace_config(config: &WorkspaceConfig) -> Result<Self> {
        let aws: crate::provider_config::AwsProviderConfig = config.provider.parse()?;
        Self::new(
            &config.workspace_name,
            AwsSettings::from_provider_config(&aws),
            AwsWorkspaceOptions::from_provider_config(&aws),
        )
        .await
    }

    /// A provider from an SDK config the caller loaded (credentials, HTTP client).
    pub fn from_sdk_config(
        workspace: &str,
        sdk_config: &aws_config::SdkConfig,
        settings: AwsSettings,
        options: AwsWorkspaceOptions,
    ) -> Result<Self> {
        Self::from_client_configs(
            workspace,
            aws_sdk_ec2::config::Builder::from(sdk_config),
            aws_sdk_iam::config::Builder::from(sdk_config),
            aws_sdk_s3::config::Builder::from(sdk_config),
            settings,
            options,
        )
    }

    /// A provider from EC2, IAM and S3 client configs (e.g. with interceptors). The region
    /// and endpoint of `settings` win over the configs'; the SDK's retries are switched
    /// off in favour of `settings.retry`.
    pub fn from_client_configs(
        workspace: &str,
        ec2: aws_sdk_ec2::config::Builder,
        iam: aws_sdk_iam::config::Builder,
        s3: aws_sdk_s3::config::Builder,
        settings: AwsSettings,
        options: AwsWorkspaceOptions,
    ) -> Result<Self> {
        let valid = !workspace.is_empty()
            && workspace.len() <= MAX_NAME_LEN
            && workspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(Error::config(
                "workspace_name",
                format!(
                    "`{workspace}` is not a valid AWS workspace name: 1 to {MAX_NAME_LEN} letters, digits, `-` or `_`"
                ),
            ));
        }
        if let WorkspaceVpc::Create { cidr } = &options.vpc {
            match parse_cidr(cidr) {
                Some((_, bits)) if (16..=SUBNET_PREFIX).contains(&bits) => {}
                _ => {
                    return Err(Error::config(
                        "provider.vpc_cidr",
                        format!("`{cidr}` is not an IPv4 range from /16 to /24"),
                    ));
                }
            }
        }
        if options.peering.is_some() && matches!(options.vpc, WorkspaceVpc::Working { .. }) {
            return Err(Error::config(
                "provider.use_working_vpc",
                "VPC peering needs a VPC of the workspace's own: set use_working_vpc to false, or use the working \
                 VPC without peering",
            ));
        }
        if let Some(id) = options.peering.as_ref().and_then(|p| p.working_vpc_id.as_ref())
            && !id.starts_with("vpc-")
        {
            return Err(Error::config(
                "provider.working_vpc_id",
                format!("`{id}` is not a VPC id (vpc-...)"),
            ));
        }
        let client = ec2_client(ec2, &settings);
        let iam = iam_client(iam, &settings);
        let s3 = s3_client(s3, &settings);
        Ok(AwsWorkspaceProvider {
            workspace: workspace.to_string(),
            settings,
            options,
            client,
            iam,
            s3,
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    /// The options in use.
    pub fn options(&self) -> &AwsWorkspaceOptions {
        &self.options
    }

    /// The name of a resource of the workspace: `cloudtik-<workspace>-<suffix>`.
    fn name(&self, suffix: &str) -> String {
        format!("cloudtik-{}-{suffix}", self.workspace)
    }

    fn security_group_name(&self) -> String {
        format!("cloudtik-{}", self.workspace)
    }

    fn public_subnet_name(&self, i: usize) -> String {
        self.name(&format!("public-subnet-{i}"))
    }

    fn private_subnet_name(&self, i: usize) -> String {
        self.name(&format!("private-subnet-{i}"))
    }

    /// The tags a created resource gets: `Name` and the workspace tag.
    fn tag_spec(&self, resource: ResourceType, name: &str) -> TagSpecification {
        self.tag_spec_with(resource, name, &[])
    }

    fn tag_spec_with(&self, resource: ResourceType, name: &str, extra: &[(&str, &str)]) -> TagSpecification {
        let mut list = vec![tag(NAME_TAG, name), tag(WORKSPACE_TAG, &self.workspace)];
        list.extend(extra.iter().map(|(k, v)| tag(k, v)));
        TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(list))
            .build()
    }

    fn workspace_filter(&self) -> Filter {
        filter(format!("tag:{WORKSPACE_TAG}"), [self.workspace.clone()])
    }

    fn is_ours(&self, tags: &[Tag]) -> bool {
        tag_value(tags, WORKSPACE_TAG) == Some(self.workspace.as_str())
    }

    /// Runs a call that reads or changes in place, retrying rate limits and transient
    /// failures.
    async fn call<T, E, F, Fut>(&self, op: &'static str, call: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.settings
            .retry
            .run(|| {
                let fut = f();
                async move { fut.await.map_err(|e| classify_sdk_error(e, op, call)) }
            })
            .await
            .map_err(|e| e.with_context("workspace", &self.workspace))
    }

    /// Runs a call that creates something, retrying only rate limits (see the type docs).
    async fn create_call<T, E, F, Fut>(&self, op: &'static str, call: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.settings
            .retry
            .run_when(
                || {
                    let fut = f();
                    async move { fut.await.map_err(|e| classify_sdk_error(e, op, call)) }
                },
                is_rate_limited,
            )
            .await
            .map_err(|e| e.with_context("workspace", &self.workspace))
    }

    /// Runs a deletion: a resource that is gone already is success, and
    /// `DependencyViolation` (a dependency still going away) is retried until
    /// [`AwsWorkspaceOptions::dependency_timeout`].
    async fn delete_call<T, E, F, Fut>(&self, op: &'static str, call: &'static str, mut f: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let deadline = Instant::now() + self.options.dependency_timeout;
        loop {
            match self.call(op, call, &mut f).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if ec2_code(&e) == Some("DependencyViolation") && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "a dependency is still there; retrying the deletion");
                    tokio::time::sleep(self.options.poll_interval).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs an IAM call, retrying rate limits and transient failures (`create`: rate
    /// limits only).
    async fn iam_call<T, E, F, Fut>(
        &self,
        op: &'static str,
        call: &'static str,
        create: bool,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let retried: fn(&Error) -> bool = if create {
            is_rate_limited
        } else {
            |e| matches!(e.kind(), ErrorKind::RateLimited | ErrorKind::Transient)
        };
        self.settings
            .retry
            .run_when(
                || {
                    let fut = f();
                    async move { fut.await.map_err(|e| classify_service_error(e, "IAM", op, call)) }
                },
                retried,
            )
            .await
            .map_err(|e| e.with_context("workspace", &self.workspace))
    }

    fn role_name(&self, kind: RoleKind) -> String {
        self.name(&format!("{}-role", kind.as_str()))
    }

    fn profile_name(&self, kind: RoleKind) -> String {
        self.name(&format!("{}-profile", kind.as_str()))
    }

    /// A role and its instance profile as IAM has them.
    async fn find_iam(&self, op: &'static str, kind: RoleKind) -> Result<IamFound> {
        let role = self.role_name(kind);
        let profile = self.profile_name(kind);
        let mut found = IamFound::default();
        match self
            .iam_call(op, "GetRole", false, || {
                self.iam.get_role().role_name(&role).send()
            })
            .await
        {
            Ok(out) => found.role_arn = out.role().map(|r| r.arn().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(at(kind.piece(), &role)(e)),
        }
        if found.role_arn.is_some() {
            let mut marker: Option<String> = None;
            loop {
                let page = self
                    .iam_call(op, "ListAttachedRolePolicies", false, || {
                        self.iam
                            .list_attached_role_policies()
                            .role_name(&role)
                            .set_marker(marker.clone())
                            .send()
                    })
                    .await
                    .map_err(at(kind.piece(), &role))?;
                found.policies.extend(
                    page.attached_policies()
                        .iter()
                        .filter_map(|p| p.policy_arn())
                        .map(str::to_string),
                );
                match page.marker() {
                    Some(m) if page.is_truncated() => marker = Some(m.to_string()),
                    _ => break,
                }
            }
        }
        match self
            .iam_call(op, "GetInstanceProfile", false, || {
                self.iam
                    .get_instance_profile()
                    .instance_profile_name(&profile)
                    .send()
            })
            .await
        {
            Ok(out) => {
                if let Some(p) = out.instance_profile() {
                    found.profile_arn = Some(p.arn().to_string());
                    found.profile_roles = p.roles().iter().map(|r| r.role_name().to_string()).collect();
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(at(kind.piece(), &profile)(e)),
        }
        Ok(found)
    }

    fn iam_complete(&self, kind: RoleKind, found: &IamFound) -> bool {
        let role = self.role_name(kind);
        found.role_arn.is_some()
            && kind.policies().iter().all(|p| found.policies.contains(*p))
            && found.profile_arn.is_some()
            && found.profile_roles.contains(&role)
    }

    fn iam_tags(&self) -> Vec<aws_sdk_iam::types::Tag> {
        aws_sdk_iam::types::Tag::builder()
            .key(WORKSPACE_TAG)
            .value(&self.workspace)
            .build()
            .into_iter()
            .collect()
    }

    /// Step 10: a role with its policies, in its instance profile. Returns whether an
    /// instance profile was created or given its role (so create waits for IAM).
    async fn ensure_role(&self, op: &'static str, kind: RoleKind, found: &IamFound) -> Result<bool> {
        let role = self.role_name(kind);
        let profile = self.profile_name(kind);
        let err = at(kind.piece(), &role);
        if found.role_arn.is_none() {
            let created = self
                .iam_call(op, "CreateRole", true, || {
                    self.iam
                        .create_role()
                        .role_name(&role)
                        .assume_role_policy_document(EC2_TRUST_POLICY)
                        .description(format!(
                            "CloudTik workspace {} {} nodes",
                            self.workspace,
                            kind.as_str()
                        ))
                        .set_tags(Some(self.iam_tags()))
                        .send()
                })
                .await;
            match created {
                Ok(_) => tracing::info!(workspace = %self.workspace, %role, "IAM role created"),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e)),
            }
        }
        for policy in kind.policies() {
            if !found.policies.contains(*policy) {
                self.iam_call(op, "AttachRolePolicy", false, || {
                    self.iam
                        .attach_role_policy()
                        .role_name(&role)
                        .policy_arn(*policy)
                        .send()
                })
                .await
                .map_err(|e| err(e).with_context("policy", policy))?;
            }
        }
        let mut changed = false;
        if found.profile_arn.is_none() {
            let created = self
                .iam_call(op, "CreateInstanceProfile", true, || {
                    self.iam
                        .create_instance_profile()
                        .instance_profile_name(&profile)
                        .set_tags(Some(self.iam_tags()))
                        .send()
                })
                .await;
            match created {
                Ok(_) => tracing::info!(workspace = %self.workspace, %profile, "instance profile created"),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(at(kind.piece(), &profile)(e)),
            }
            changed = true;
        }
        if !found.profile_roles.contains(&role) {
            self.iam_call(op, "AddRoleToInstanceProfile", false, || {
                self.iam
                    .add_role_to_instance_profile()
                    .instance_profile_name(&profile)
                    .role_name(&role)
                    .send()
            })
            .await
            .map_err(|e| at(kind.piece(), &profile)(e).with_context("role", &role))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Deletes a role's instance profile, then the role (detaching its policies first).
    async fn delete_role(&self, op: &'static str, kind: RoleKind, found: &IamFound) -> Result<()> {
        let role = self.role_name(kind);
        let profile = self.profile_name(kind);
        let gone = |r: Result<()>| match r {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if found.profile_arn.is_some() {
            for member in &found.profile_roles {
                gone(
                    self.iam_call(op, "RemoveRoleFromInstanceProfile", false, || {
                        self.iam
                            .remove_role_from_instance_profile()
                            .instance_profile_name(&profile)
                            .role_name(member)
                            .send()
                    })
                    .await
                    .map(|_| ()),
                )
                .map_err(|e| at(kind.piece(), &profile)(e).with_context("role", member))?;
            }
            gone(
                self.iam_call(op, "DeleteInstanceProfile", false, || {
                    self.iam
                        .delete_instance_profile()
                        .instance_profile_name(&profile)
                        .send()
                })
                .await
                .map(|_| ()),
            )
            .map_err(at(kind.piece(), &profile))?;
        }
        if found.role_arn.is_some() {
            for policy in &found.policies {
                gone(
                    self.iam_call(op, "DetachRolePolicy", false, || {
                        self.iam
                            .detach_role_policy()
                            .role_name(&role)
                            .policy_arn(policy)
                            .send()
                    })
                    .await
                    .map(|_| ()),
                )
                .map_err(|e| at(kind.piece(), &role)(e).with_context("policy", policy))?;
            }
            let inline = match self
                .iam_call(op, "ListRolePolicies", false, || {
                    self.iam.list_role_policies().role_name(&role).send()
                })
                .await
            {
                Ok(out) => out.policy_names().to_vec(),
                Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(at(kind.piece(), &role)(e)),
            };
            for policy in &inline {
                gone(
                    self.iam_call(op, "DeleteRolePolicy", false, || {
                        self.iam
                            .delete_role_policy()
                            .role_name(&role)
                            .policy_name(policy)
                            .send()
                    })
                    .await
                    .map(|_| ()),
                )
                .map_err(|e| at(kind.piece(), &role)(e).with_context("policy", policy))?;
            }
            gone(
                self.iam_call(op, "DeleteRole", false, || {
                    self.iam.delete_role().role_name(&role).send()
                })
                .await
                .map(|_| ()),
            )
            .map_err(at(kind.piece(), &role))?;
        }
        Ok(())
    }

    /// Runs an S3 call, retrying rate limits and transient failures.
    async fn s3_call<T, E, F, Fut>(&self, op: &'static str, call: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.settings
            .retry
            .run(|| {
                let fut = f();
                async move { fut.await.map_err(|e| classify_service_error(e, "S3", op, call)) }
            })
            .await
            .map_err(|e| {
                e.with_context("workspace", &self.workspace)
                    .with_context("step", Piece::ManagedStorage.as_str())
                    .with_context("resource", self.bucket_name())
            })
    }

    /// The managed bucket: `cloudtik-<workspace>-<region>-default` (as CloudTik).
    fn bucket_name(&self) -> String {
        format!("cloudtik-{}-{}-default", self.workspace, self.settings.region)
    }

    /// Whether the managed bucket exists (and is this account's).
    async fn bucket_exists(&self, op: &'static str) -> Result<bool> {
        let bucket = self.bucket_name();
        match self
            .s3_call(op, "HeadBucket", || self.s3.head_bucket().bucket(&bucket).send())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Step 11: the managed bucket, tagged with the workspace and encrypted (SSE-S3).
    async fn ensure_bucket(&self, op: &'static str, exists: bool) -> Result<()> {
        let bucket = self.bucket_name();
        if !exists {
            let location = (self.settings.region != "us-east-1").then(|| {
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.settings.region.as_str(),
                    ))
                    .build()
            });
            let created = self
                .s3_call(op, "CreateBucket", || {
                    self.s3
                        .create_bucket()
                        .bucket(&bucket)
                        .set_create_bucket_configuration(location.clone())
                        .send()
                })
                .await;
            match created {
                Ok(_) => tracing::info!(workspace = %self.workspace, %bucket, "managed bucket created"),
                Err(e) if ec2_code(&e) == Some("BucketAlreadyOwnedByYou") => {}
                Err(e) => return Err(e),
            }
        }
        let build = |e: aws_sdk_s3::error::BuildError| {
            unexpected(op, &format!("an S3 request could not be built: {e}"))
        };
        let tagging = aws_sdk_s3::types::Tagging::builder()
            .tag_set(
                aws_sdk_s3::types::Tag::builder()
                    .key(WORKSPACE_TAG)
                    .value(&self.workspace)
                    .build()
                    .map_err(build)?,
            )
            .build()
            .map_err(build)?;
        self.s3_call(op, "PutBucketTagging", || {
            self.s3
                .put_bucket_tagging()
                .bucket(&bucket)
                .tagging(tagging.clone())
                .send()
        })
        .await?;
        let encryption = aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder()
            .rules(
                aws_sdk_s3::types::ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(aws_sdk_s3::types::ServerSideEncryption::Aes256)
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            )
            .build()
            .map_err(build)?;
        self.s3_call(op, "PutBucketEncryption", || {
            self.s3
                .put_bucket_encryption()
                .bucket(&bucket)
                .server_side_encryption_configuration(encryption.clone())
                .send()
        })
        .await?;
        Ok(())
    }

    /// Empties and deletes the managed bucket (gone already is success).
    async fn delete_bucket(&self, op: &'static str) -> Result<()> {
        let bucket = self.bucket_name();
        let build = |e: aws_sdk_s3::error::BuildError| {
            unexpected(op, &format!("an S3 request could not be built: {e}"))
        };
        loop {
            let listed = match self
                .s3_call(op, "ListObjectsV2", || {
                    self.s3.list_objects_v2().bucket(&bucket).send()
                })
                .await
            {
                Ok(l) => l,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let keys: Vec<aws_sdk_s3::types::ObjectIdentifier> = listed
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|k| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .map_err(build)
                })
                .collect::<Result<_>>()?;
            if keys.is_empty() {
                break;
            }
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(keys))
                .quiet(true)
                .build()
                .map_err(build)?;
            self.s3_call(op, "DeleteObjects", || {
                self.s3
                    .delete_objects()
                    .bucket(&bucket)
                    .delete(delete.clone())
                    .send()
            })
            .await?;
        }
        match self
            .s3_call(op, "DeleteBucket", || {
                self.s3.delete_bucket().bucket(&bucket).send()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Looks up everything of the workspace by its tag (and a working VPC's gateway).
    async fn find(&self, op: &'static str) -> Result<Found> {
        let mut found = Found::default();
        let ws = || Some(vec![self.workspace_filter()]);

        let vpcs = self
            .call(op, "DescribeVpcs", || {
                self.client.describe_vpcs().set_filters(ws()).send()
            })
            .await?;
        let mut vpcs: Vec<Vpc> = vpcs
            .vpcs()
            .iter()
            .filter(|v| self.is_ours(v.tags()))
            .cloned()
            .collect();
        vpcs.sort_by(|a, b| a.vpc_id().cmp(&b.vpc_id()));
        if vpcs.len() > 1 {
            tracing::warn!(workspace = %self.workspace, count = vpcs.len(), "several VPCs carry the workspace tag; using the first");
        }
        found.vpc = vpcs.into_iter().next();

        let subnets = self
            .call(op, "DescribeSubnets", || {
                self.client.describe_subnets().set_filters(ws()).send()
            })
            .await?;
        found.subnets = subnets
            .subnets()
            .iter()
            .filter(|s| self.is_ours(s.tags()))
            .cloned()
            .collect();

        let gateways = self
            .call(op, "DescribeInternetGateways", || {
                self.client.describe_internet_gateways().set_filters(ws()).send()
            })
            .await?;
        found.gateways = gateways
            .internet_gateways()
            .iter()
            .filter(|g| self.is_ours(g.tags()))
            .cloned()
            .collect();
        if let Some(vpc_id) = found.vpc.as_ref().and_then(|v| v.vpc_id())
            && !found.gateways.iter().any(|g| attached_to(g, vpc_id))
        {
            let attached = self
                .call(op, "DescribeInternetGateways", || {
                    self.client
                        .describe_internet_gateways()
                        .filters(filter("attachment.vpc-id", [vpc_id]))
                        .send()
                })
                .await?;
            found.gateways.extend(
                attached
                    .internet_gateways()
                    .iter()
                    .filter(|g| attached_to(g, vpc_id))
                    .cloned(),
            );
        }

        let tables = self
            .call(op, "DescribeRouteTables", || {
                self.client.describe_route_tables().set_filters(ws()).send()
            })
            .await?;
        found.route_tables = tables
            .route_tables()
            .iter()
            .filter(|t| self.is_ours(t.tags()))
            .cloned()
            .collect();

        let addresses = self
            .call(op, "DescribeAddresses", || {
                self.client.describe_addresses().set_filters(ws()).send()
            })
            .await?;
        found.addresses = addresses
            .addresses()
            .iter()
            .filter(|a| self.is_ours(a.tags()))
            .cloned()
            .collect();

        // NAT gateways: moto ignores tag filters here, and EC2 keeps deleted ones listed
        // for a while; the tag and the state are checked here.
        let mut next: Option<String> = None;
        loop {
            let page = self
                .call(op, "DescribeNatGateways", || {
                    self.client
                        .describe_nat_gateways()
                        .set_filter(ws())
                        .set_next_token(next.clone())
                        .send()
                })
                .await?;
            found.nat_gateways.extend(
                page.nat_gateways()
                    .iter()
                    .filter(|n| self.is_ours(n.tags()))
                    .filter(|n| {
                        matches!(
                            n.state(),
                            Some(NatGatewayState::Pending | NatGatewayState::Available)
                        )
                    })
                    .cloned(),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }

        let endpoints = self
            .call(op, "DescribeVpcEndpoints", || {
                self.client.describe_vpc_endpoints().set_filters(ws()).send()
            })
            .await?;
        found.endpoints = endpoints
            .vpc_endpoints()
            .iter()
            .filter(|e| self.is_ours(e.tags()))
            // EC2 spells endpoint states both `Deleted` and `deleted`.
            .filter(|e| {
                !e.state().is_some_and(|s| {
                    matches!(s.as_str().to_ascii_lowercase().as_str(), "deleting" | "deleted")
                })
            })
            .cloned()
            .collect();

        let groups = self
            .call(op, "DescribeSecurityGroups", || {
                self.client.describe_security_groups().set_filters(ws()).send()
            })
            .await?;
        found.security_groups = groups
            .security_groups()
            .iter()
            .filter(|g| self.is_ours(g.tags()))
            .cloned()
            .collect();

        // Peering connections: moto ignores the filters here; the tag is checked here.
        let mut next: Option<String> = None;
        loop {
            let page = self
                .call(op, "DescribeVpcPeeringConnections", || {
                    self.client
                        .describe_vpc_peering_connections()
                        .set_filters(ws())
                        .set_next_token(next.clone())
                        .send()
                })
                .await?;
            found.peerings.extend(
                page.vpc_peering_connections()
                    .iter()
                    .filter(|p| self.is_ours(p.tags()))
                    .cloned(),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        if let Some(working) = self.peering(&found).and_then(requester_vpc_id) {
            let working = working.to_string();
            let tables = self
                .call(op, "DescribeRouteTables", || {
                    self.client
                        .describe_route_tables()
                        .filters(filter("vpc-id", [working.as_str()]))
                        .send()
                })
                .await
                .map_err(|e| e.with_context("working_vpc", &working))?;
            found.working_tables = tables.route_tables().to_vec();
        }

        found.head = self.find_iam(op, RoleKind::Head).await?;
        found.worker = self.find_iam(op, RoleKind::Worker).await?;
        found.bucket = self.bucket_exists(op).await?;
        Ok(found)
    }

    fn subnet<'a>(&self, found: &'a Found, name: &str) -> Option<&'a Subnet> {
        let vpc_id = found.vpc.as_ref().and_then(|v| v.vpc_id());
        found.subnets.iter().find(|s| {
            tag_value(s.tags(), NAME_TAG) == Some(name) && (vpc_id.is_none() || s.vpc_id() == vpc_id)
        })
    }

    fn public_subnets<'a>(&self, found: &'a Found) -> Vec<&'a Subnet> {
        (0..self.options.public_subnets)
            .filter_map(|i| self.subnet(found, &self.public_subnet_name(i)))
            .collect()
    }

    fn private_subnets<'a>(&self, found: &'a Found) -> Vec<&'a Subnet> {
        (0..self.options.private_subnets)
            .filter_map(|i| self.subnet(found, &self.private_subnet_name(i)))
            .collect()
    }

    /// The gateway of the VPC: attached to it (ours or, for a working VPC, its own), or
    /// ours and not attached yet.
    fn gateway<'a>(&self, found: &'a Found) -> Option<&'a InternetGateway> {
        let vpc_id = found.vpc.as_ref().and_then(|v| v.vpc_id());
        vpc_id
            .and_then(|id| found.gateways.iter().find(|g| attached_to(g, id)))
            .or_else(|| {
                found
                    .gateways
                    .iter()
                    .find(|g| self.is_ours(g.tags()) && g.attachments().is_empty())
            })
    }

    fn route_table<'a>(&self, found: &'a Found, name: &str) -> Option<&'a RouteTable> {
        named(&found.route_tables, RouteTable::tags, name)
    }

    fn address<'a>(&self, found: &'a Found) -> Option<&'a Address> {
        let name = self.name("elastic-ip");
        named(&found.addresses, Address::tags, &name)
    }

    fn nat_gateway<'a>(&self, found: &'a Found) -> Option<&'a NatGateway> {
        let name = self.name("nat-gateway");
        named(&found.nat_gateways, NatGateway::tags, &name)
    }

    fn endpoint<'a>(&self, found: &'a Found) -> Option<&'a VpcEndpoint> {
        let name = self.name("vpc-endpoint-s3");
        named(&found.endpoints, VpcEndpoint::tags, &name)
    }

    fn security_group<'a>(&self, found: &'a Found) -> Option<&'a SecurityGroup> {
        let name = self.security_group_name();
        let vpc_id = found.vpc.as_ref().and_then(|v| v.vpc_id());
        found
            .security_groups
            .iter()
            .find(|g| g.group_name() == Some(name.as_str()) && (vpc_id.is_none() || g.vpc_id() == vpc_id))
    }

    fn peering_name(&self) -> String {
        self.name("vpc-peering-connection")
    }

    /// The workspace's live peering connection (not deleted, rejected, failed or
    /// expired) to its VPC.
    fn peering<'a>(&self, found: &'a Found) -> Option<&'a VpcPeeringConnection> {
        let name = self.peering_name();
        let vpc_id = found.vpc.as_ref().and_then(|v| v.vpc_id());
        found.peerings.iter().filter(|p| peering_live(p)).find(|p| {
            tag_value(p.tags(), NAME_TAG) == Some(name.as_str())
                && (vpc_id.is_none() || accepter_vpc_id(p) == vpc_id)
        })
    }

    /// Whether the peering is active, with the routes in both VPCs: to the working
    /// VPC's range in the workspace's route tables, to the workspace VPC's range in
    /// every route table of the working VPC.
    fn peering_complete(&self, found: &Found, wanted: &VpcPeering) -> bool {
        let Some(peering) = self.peering(found) else {
            return false;
        };
        let info = peering.requester_vpc_info();
        let (Some(pcx), Some(working_id), Some(working_cidr), Some(vpc_cidr)) = (
            peering.vpc_peering_connection_id(),
            info.and_then(|i| i.vpc_id()),
            info.and_then(|i| i.cidr_block()),
            found.vpc.as_ref().and_then(|v| v.cidr_block()),
        ) else {
            return false;
        };
        let own_tables = [Piece::PublicRouteTable, Piece::PrivateRouteTable].map(|piece| {
            self.route_table(found, &self.name(piece.as_str()))
                .is_some_and(|t| routes_via(t, working_cidr, pcx))
        });
        peering_state(peering) == Some(&VpcPeeringConnectionStateReasonCode::Active)
            && wanted.working_vpc_id.as_deref().is_none_or(|w| w == working_id)
            && own_tables.iter().all(|ok| *ok)
            && !found.working_tables.is_empty()
            && found.working_tables.iter().all(|t| routes_via(t, vpc_cidr, pcx))
    }

    /// The pieces that are missing or not set up, in creation order; and whether any
    /// piece of the workspace exists at all.
    fn missing(&self, found: &Found) -> (Vec<Piece>, bool) {
        let public = self.public_subnets(found);
        let private = self.private_subnets(found);
        let gateway = self.gateway(found);
        let gateway_attached = match (gateway, found.vpc.as_ref().and_then(|v| v.vpc_id())) {
            (Some(g), Some(vpc)) => attached_to(g, vpc),
            _ => false,
        };
        let nat = self.nat_gateway(found);
        let routes_ok = |name: &str, subnets: &[&Subnet], target: Option<&str>| {
            self.route_table(found, name).is_some_and(|t| {
                target.is_some_and(|target| default_target(t) == Some(target))
                    && subnets
                        .iter()
                        .all(|s| s.subnet_id().is_some_and(|id| associated(t, id)))
            })
        };
        let mut missing = Vec::new();
        for piece in Piece::ALL {
            let present = match piece {
                Piece::Vpc => found.vpc.is_some(),
                Piece::PublicSubnets => public.len() == self.options.public_subnets,
                Piece::PrivateSubnets => private.len() == self.options.private_subnets,
                Piece::InternetGateway => gateway_attached,
                Piece::PublicRouteTable => routes_ok(
                    &self.name("public-route-table"),
                    &public,
                    gateway.and_then(|g| g.internet_gateway_id()),
                ),
                Piece::ElasticIp => self.address(found).is_some(),
                Piece::NatGateway => nat.is_some_and(|n| n.state() == Some(&NatGatewayState::Available)),
                Piece::PrivateRouteTable => routes_ok(
                    &self.name("private-route-table"),
                    &private,
                    nat.and_then(|n| n.nat_gateway_id()),
                ),
                Piece::S3Endpoint => self.endpoint(found).is_some(),
                Piece::SecurityGroup => self.security_group(found).is_some(),
                Piece::VpcPeering => self
                    .options
                    .peering
                    .as_ref()
                    .is_none_or(|wanted| self.peering_complete(found, wanted)),
                Piece::HeadRole => self.iam_complete(RoleKind::Head, &found.head),
                Piece::WorkerRole => self.iam_complete(RoleKind::Worker, &found.worker),
                Piece::ManagedStorage => found.bucket || !self.options.managed_cloud_storage,
            };
            if !present {
                missing.push(piece);
            }
        }
        let any = found.vpc.is_some()
            || !found.subnets.is_empty()
            || found.gateways.iter().any(|g| self.is_ours(g.tags()))
            || !found.route_tables.is_empty()
            || !found.addresses.is_empty()
            || !found.nat_gateways.is_empty()
            || !found.endpoints.is_empty()
            || !found.security_groups.is_empty()
            || found.peerings.iter().any(peering_live)
            || found.head.exists()
            || found.worker.exists()
            || found.bucket;
        (missing, any)
    }

    // ---- create steps ----

    /// Step 1: the VPC; returns its id and IPv4 range. A VPC to be peered with
    /// `working` gets a range that overlaps none the working VPC uses.
    async fn ensure_vpc(
        &self,
        op: &'static str,
        found: &Found,
        working: Option<&WorkingVpc>,
    ) -> Result<(String, String)> {
        let name = self.name("vpc");
        let err = at(Piece::Vpc, &name);
        match &self.options.vpc {
            WorkspaceVpc::Create { cidr } => {
                if let Some(vpc) = &found.vpc {
                    return vpc_id_cidr(vpc).map_err(&err);
                }
                let cidr = match working {
                    None => cidr.clone(),
                    Some(w) => peering_cidr(cidr, &w.used()).ok_or_else(|| {
                        err(Error::new(
                            ErrorKind::Capacity,
                            format!(
                                "no 10.X.0.0/16 range is free of the ranges and routes of the working VPC {}: \
                                 the workspace's VPC cannot be peered with it",
                                w.id
                            ),
                        )
                        .with_operation(op))
                    })?,
                };
                let created = self
                    .create_call(op, "CreateVpc", || {
                        self.client
                            .create_vpc()
                            .cidr_block(&cidr)
                            .tag_specifications(self.tag_spec_with(
                                ResourceType::Vpc,
                                &name,
                                &[(VPC_ORIGIN_TAG, "created"), (VERSION_TAG, "1")],
                            ))
                            .send()
                    })
                    .await
                    .map_err(&err)?;
                let vpc = created
                    .vpc()
                    .ok_or_else(|| err(unexpected(op, "CreateVpc answered no VPC")))?;
                let (id, cidr) = vpc_id_cidr(vpc).map_err(&err)?;
                self.call(op, "ModifyVpcAttribute", || {
                    self.client
                        .modify_vpc_attribute()
                        .vpc_id(&id)
                        .enable_dns_hostnames(AttributeBooleanValue::builder().value(true).build())
                        .send()
                })
                .await
                .map_err(|e| err(e).with_context("vpc", &id))?;
                tracing::info!(workspace = %self.workspace, vpc = %id, "VPC created");
                Ok((id, cidr))
            }
            WorkspaceVpc::Working { vpc_id } => {
                let wanted = match vpc_id {
                    Some(id) => id.clone(),
                    None => match &found.vpc {
                        Some(vpc) => vpc_id_cidr(vpc).map_err(&err)?.0,
                        None => self.working_vpc_id(op).await.map_err(&err)?,
                    },
                };
                if let Some(vpc) = &found.vpc {
                    let (id, cidr) = vpc_id_cidr(vpc).map_err(&err)?;
                    if id != wanted {
                        return Err(err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "workspace {} already uses VPC {id}, not the working VPC {wanted}: delete the \
                                 workspace first",
                                self.workspace
                            ),
                        )
                        .with_operation(op)));
                    }
                    return Ok((id, cidr));
                }
                let described = self
                    .call(op, "DescribeVpcs", || {
                        self.client.describe_vpcs().vpc_ids(&wanted).send()
                    })
                    .await
                    .map_err(|e| err(e).with_context("vpc", &wanted))?;
                let vpc = described.vpcs().first().ok_or_else(|| {
                    err(Error::new(
                        ErrorKind::NotFound,
                        format!("the working VPC {wanted} does not exist"),
                    )
                    .with_operation(op))
                })?;
                let (id, cidr) = vpc_id_cidr(vpc).map_err(&err)?;
                self.call(op, "CreateTags", || {
                    self.client
                        .create_tags()
                        .resources(&id)
                        .tags(tag(WORKSPACE_TAG, &self.workspace))
                        .tags(tag(VPC_ORIGIN_TAG, "working"))
                        .send()
                })
                .await
                .map_err(|e| err(e).with_context("vpc", &id))?;
                tracing::info!(workspace = %self.workspace, vpc = %id, "working VPC tagged");
                Ok((id, cidr))
            }
        }
    }

    /// The VPC of the EC2 instance this process runs on, found by its private address.
    async fn working_vpc_id(&self, op: &'static str) -> Result<String> {
        let ip = local_ipv4().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "the working VPC (use_working_vpc, or peering for use_internal_ips) cannot be found: this \
                 machine's address is unknown; give provider.working_vpc_id",
            )
            .with_operation(op)
        })?;
        let described = self
            .call(op, "DescribeInstances", || {
                self.client
                    .describe_instances()
                    .filters(filter("private-ip-address", [ip.to_string()]))
                    .send()
            })
            .await?;
        described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.vpc_id())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the working VPC (use_working_vpc, or peering for use_internal_ips) is the VPC of this \
                         machine, but no EC2 instance of this account has its address {ip}: run on an instance \
                         in the VPC, or give provider.working_vpc_id"
                    ),
                )
                .with_operation(op)
            })
    }

    /// The working VPC of the peering: the configured one, else the one the workspace's
    /// peering connection comes from, else this machine's; with its ranges and route
    /// tables.
    async fn working_vpc(&self, op: &'static str, found: &Found, wanted: &VpcPeering) -> Result<WorkingVpc> {
        let id = match (
            &wanted.working_vpc_id,
            self.peering(found).and_then(requester_vpc_id),
        ) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) => id.to_string(),
            (None, None) => self.working_vpc_id(op).await?,
        };
        let described = self
            .call(op, "DescribeVpcs", || {
                self.client.describe_vpcs().vpc_ids(&id).send()
            })
            .await
            .map_err(|e| e.with_context("working_vpc", &id))?;
        let vpc = described.vpcs().first().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("the working VPC {id} does not exist"),
            )
            .with_operation(op)
        })?;
        let (id, cidr) = vpc_id_cidr(vpc)?;
        let mut cidrs = vec![cidr.clone()];
        for block in vpc.cidr_block_association_set() {
            let live = block.cidr_block_state().and_then(|s| s.state()).is_none_or(|s| {
                matches!(
                    s,
                    VpcCidrBlockStateCode::Associated | VpcCidrBlockStateCode::Associating
                )
            });
            if let Some(c) = block.cidr_block()
                && live
                && !cidrs.iter().any(|known| known == c)
            {
                cidrs.push(c.to_string());
            }
        }
        let tables = self
            .call(op, "DescribeRouteTables", || {
                self.client
                    .describe_route_tables()
                    .filters(filter("vpc-id", [id.as_str()]))
                    .send()
            })
            .await
            .map_err(|e| e.with_context("working_vpc", &id))?;
        Ok(WorkingVpc {
            id,
            cidr,
            cidrs,
            tables: tables.route_tables().to_vec(),
        })
    }

    /// The working VPC's range the security group lets in, when peering wants it: the
    /// range the live peering connection comes from, else the working VPC's.
    async fn working_rule_cidr(&self, op: &'static str, found: &Found) -> Result<Option<String>> {
        let Some(wanted) = self.options.peering.as_ref().filter(|p| p.allow_working_subnet) else {
            return Ok(None);
        };
        if let Some(info) = self.peering(found).and_then(|p| p.requester_vpc_info())
            && let (Some(id), Some(cidr)) = (info.vpc_id(), info.cidr_block())
            && wanted.working_vpc_id.as_deref().is_none_or(|w| w == id)
        {
            return Ok(Some(cidr.to_string()));
        }
        let working = self
            .working_vpc(op, found, wanted)
            .await
            .map_err(at(Piece::SecurityGroup, &self.security_group_name()))?;
        Ok(Some(working.cidr))
    }

    /// Step 10: the peering connection from the working VPC to the workspace's VPC,
    /// accepted and active, and the routes between the two through it (in `tables`,
    /// the workspace's route tables, and in every route table of the working VPC).
    /// Returns the connection's id.
    async fn ensure_peering(
        &self,
        op: &'static str,
        found: &Found,
        vpc_id: &str,
        vpc_cidr: &str,
        working: &WorkingVpc,
        tables: &[String],
    ) -> Result<String> {
        let name = self.peering_name();
        let err = at(Piece::VpcPeering, &name);
        let conflict = |message: String| err(Error::new(ErrorKind::Conflict, message).with_operation(op));
        if working.id == vpc_id {
            return Err(conflict(format!(
                "the working VPC {vpc_id} is the workspace's own VPC: use use_working_vpc instead of peering"
            )));
        }
        if let Some(c) = working.cidrs.iter().find(|c| overlaps(vpc_cidr, c)) {
            return Err(conflict(format!(
                "the workspace's VPC {vpc_id} ({vpc_cidr}) overlaps the working VPC {} ({c}), and peered VPCs must \
                 not overlap: delete the workspace and create it again",
                working.id
            )));
        }
        let (id, mut state) = match self.peering(found) {
            Some(p) => {
                let id = p
                    .vpc_peering_connection_id()
                    .ok_or_else(|| err(unexpected(op, "a peering connection has no id")))?
                    .to_string();
                let from = requester_vpc_id(p).unwrap_or("an unknown VPC");
                if from != working.id {
                    return Err(conflict(format!(
                        "workspace {} is peered with VPC {from} (peering connection {id}), not with the working \
                         VPC {}: delete the workspace first",
                        self.workspace, working.id
                    )));
                }
                (id, peering_state(p).cloned())
            }
            None => {
                let answer = self
                    .create_call(op, "CreateVpcPeeringConnection", || {
                        self.client
                            .create_vpc_peering_connection()
                            .vpc_id(&working.id)
                            .peer_vpc_id(vpc_id)
                            .tag_specifications(self.tag_spec(ResourceType::VpcPeeringConnection, &name))
                            .send()
                    })
                    .await
                    .map_err(|e| {
                        err(e)
                            .with_context("working_vpc", &working.id)
                            .with_context("vpc", vpc_id)
                    })?;
                let created = answer.vpc_peering_connection().ok_or_else(|| {
                    err(unexpected(
                        op,
                        "CreateVpcPeeringConnection answered no connection",
                    ))
                })?;
                let id = created
                    .vpc_peering_connection_id()
                    .ok_or_else(|| err(unexpected(op, "CreateVpcPeeringConnection answered no id")))?
                    .to_string();
                tracing::info!(workspace = %self.workspace, peering = %id, working_vpc = %working.id, "VPC peering connection created");
                (id, peering_state(created).cloned())
            }
        };

        // Accept it once it waits for acceptance, and wait until it is active.
        let deadline = Instant::now() + self.options.peering_timeout;
        loop {
            use VpcPeeringConnectionStateReasonCode as Code;
            match &state {
                Some(Code::Active) => break,
                Some(Code::PendingAcceptance) => {
                    let accepted = self
                        .call(op, "AcceptVpcPeeringConnection", || {
                            self.client
                                .accept_vpc_peering_connection()
                                .vpc_peering_connection_id(&id)
                                .send()
                        })
                        .await;
                    match accepted {
                        Ok(_) => {
                            tracing::info!(workspace = %self.workspace, peering = %id, "VPC peering connection accepted");
                        }
                        // Accepted by a concurrent run (or an answer that was lost).
                        Err(e) if ec2_code(&e) == Some("InvalidStateTransition") => {}
                        Err(e) => return Err(err(e).with_context("peering", &id)),
                    }
                }
                Some(
                    dead @ (Code::Deleted | Code::Deleting | Code::Expired | Code::Failed | Code::Rejected),
                ) => {
                    return Err(err(Error::new(
                        ErrorKind::Unexpected,
                        format!(
                            "VPC peering connection {id} is {}; run create again for a new one",
                            dead.as_str()
                        ),
                    )
                    .with_operation(op)));
                }
                _ => {
                    if Instant::now() >= deadline {
                        return Err(err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "VPC peering connection {id} is not active after {:?} (it is {}); run create again",
                                self.options.peering_timeout,
                                state.as_ref().map_or("in no state", |s| s.as_str())
                            ),
                        )
                        .with_operation(op)));
                    }
                    tokio::time::sleep(self.options.poll_interval).await;
                }
            }
            let described = self
                .call(op, "DescribeVpcPeeringConnections", || {
                    self.client
                        .describe_vpc_peering_connections()
                        .vpc_peering_connection_ids(&id)
                        .send()
                })
                .await
                .map_err(|e| err(e).with_context("peering", &id))?;
            state = described
                .vpc_peering_connections()
                .iter()
                .find(|p| p.vpc_peering_connection_id() == Some(id.as_str()))
                .and_then(peering_state)
                .cloned();
        }

        // The routes, in both directions.
        let own = self
            .call(op, "DescribeRouteTables", || {
                self.client
                    .describe_route_tables()
                    .set_route_table_ids(Some(tables.to_vec()))
                    .send()
            })
            .await
            .map_err(&err)?;
        for table in own.route_tables() {
            self.ensure_peering_route(op, table, &working.cidr, &id)
                .await
                .map_err(&err)?;
        }
        for table in &working.tables {
            self.ensure_peering_route(op, table, vpc_cidr, &id)
                .await
                .map_err(|e| err(e).with_context("working_vpc", &working.id))?;
        }
        Ok(id)
    }

    /// A route to `destination` through the peering connection `pcx` in `table`: added
    /// when missing, replacing a route of the destination that is a blackhole (its
    /// target is gone); a route of the destination to anything else is a conflict.
    async fn ensure_peering_route(
        &self,
        op: &'static str,
        table: &RouteTable,
        destination: &str,
        pcx: &str,
    ) -> Result<()> {
        let table_id = table
            .route_table_id()
            .ok_or_else(|| unexpected(op, "a route table has no id"))?;
        let context = |e: Error| {
            e.with_context("route_table", table_id)
                .with_context("destination", destination)
        };
        let existing = table
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some(destination));
        match existing {
            Some(r) if r.vpc_peering_connection_id() == Some(pcx) => Ok(()),
            Some(r) if r.state() == Some(&RouteState::Blackhole) => {
                self.call(op, "ReplaceRoute", || {
                    self.client
                        .replace_route()
                        .route_table_id(table_id)
                        .destination_cidr_block(destination)
                        .vpc_peering_connection_id(pcx)
                        .send()
                })
                .await
                .map_err(context)?;
                Ok(())
            }
            Some(r) => Err(context(
                Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "route table {table_id} already sends {destination} to {}, not to the peering connection \
                         {pcx}",
                        route_target(r)
                    ),
                )
                .with_operation(op),
            )),
            None => {
                let created = self
                    .call(op, "CreateRoute", || {
                        self.client
                            .create_route()
                            .route_table_id(table_id)
                            .destination_cidr_block(destination)
                            .vpc_peering_connection_id(pcx)
                            .send()
                    })
                    .await;
                match created {
                    Ok(_) => Ok(()),
                    // Added by a concurrent run (or an answer that was lost).
                    Err(e) if ec2_code(&e) == Some("RouteAlreadyExists") => Ok(()),
                    Err(e) => Err(context(e)),
                }
            }
        }
    }

    /// The zones for subnets: the configured ones or the region's available zones.
    async fn zones(&self, op: &'static str) -> Result<Vec<String>> {
        if !self.options.availability_zones.is_empty() {
            return Ok(self.options.availability_zones.clone());
        }
        let described = self
            .call(op, "DescribeAvailabilityZones", || {
                self.client
                    .describe_availability_zones()
                    .filters(filter("state", ["available"]))
                    .send()
            })
            .await?;
        let mut zones: Vec<String> = described
            .availability_zones()
            .iter()
            .filter(|z| z.zone_type().is_none_or(|t| t == "availability-zone"))
            .filter_map(|z| z.zone_name().map(str::to_string))
            .collect();
        zones.sort();
        if zones.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("region {} lists no available zone", self.settings.region),
            )
            .with_operation(op));
        }
        Ok(zones)
    }

    /// Step 2: the public and private subnets; returns their ids.
    async fn ensure_subnets(
        &self,
        op: &'static str,
        found: &Found,
        vpc_id: &str,
        vpc_cidr: &str,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let wanted: Vec<(Piece, String, usize)> = (0..self.options.public_subnets)
            .map(|i| (Piece::PublicSubnets, self.public_subnet_name(i), i))
            .chain(
                (0..self.options.private_subnets)
                    .map(|i| (Piece::PrivateSubnets, self.private_subnet_name(i), i)),
            )
            .collect();
        let missing: Vec<&(Piece, String, usize)> = wanted
            .iter()
            .filter(|(_, name, _)| self.subnet(found, name).is_none())
            .collect();
        let mut created: BTreeMap<String, Subnet> = BTreeMap::new();
        if !missing.is_empty() {
            let (first_piece, first_name, _) = missing[0];
            let zones = self.zones(op).await.map_err(at(*first_piece, first_name))?;
            let in_vpc = self
                .call(op, "DescribeSubnets", || {
                    self.client
                        .describe_subnets()
                        .filters(filter("vpc-id", [vpc_id]))
                        .send()
                })
                .await
                .map_err(at(*first_piece, first_name))?;
            let used: Vec<&str> = in_vpc.subnets().iter().filter_map(|s| s.cidr_block()).collect();
            let blocks = free_blocks(vpc_cidr, &used, SUBNET_PREFIX, missing.len()).ok_or_else(|| {
                at(*first_piece, first_name)(
                    Error::new(
                        ErrorKind::Capacity,
                        format!(
                            "VPC {vpc_id} ({vpc_cidr}) has no room for {} more /{SUBNET_PREFIX} subnet(s)",
                            missing.len()
                        ),
                    )
                    .with_operation(op),
                )
            })?;
            for ((piece, name, index), cidr) in missing.into_iter().zip(blocks) {
                let zone = &zones[index % zones.len()];
                let answer = self
                    .create_call(op, "CreateSubnet", || {
                        self.client
                            .create_subnet()
                            .vpc_id(vpc_id)
                            .cidr_block(&cidr)
                            .availability_zone(zone)
                            .tag_specifications(self.tag_spec(ResourceType::Subnet, name))
                            .send()
                    })
                    .await
                    .map_err(|e| {
                        at(*piece, name)(e)
                            .with_context("zone", zone)
                            .with_context("cidr", &cidr)
                    })?;
                let subnet = answer
                    .subnet()
                    .cloned()
                    .ok_or_else(|| at(*piece, name)(unexpected(op, "CreateSubnet answered no subnet")))?;
                tracing::info!(workspace = %self.workspace, subnet = ?subnet.subnet_id(), %name, "subnet created");
                created.insert(name.clone(), subnet);
            }
        }
        let mut public = Vec::new();
        let mut private = Vec::new();
        for (piece, name, _) in &wanted {
            let subnet = self
                .subnet(found, name)
                .or_else(|| created.get(name))
                .ok_or_else(|| at(*piece, name)(unexpected(op, "a created subnet is gone")))?;
            let id = subnet
                .subnet_id()
                .ok_or_else(|| at(*piece, name)(unexpected(op, "a subnet has no id")))?
                .to_string();
            if *piece == Piece::PublicSubnets {
                if subnet.map_public_ip_on_launch() != Some(true) {
                    self.call(op, "ModifySubnetAttribute", || {
                        self.client
                            .modify_subnet_attribute()
                            .subnet_id(&id)
                            .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
                            .send()
                    })
                    .await
                    .map_err(at(*piece, name))?;
                }
                public.push(id);
            } else {
                private.push(id);
            }
        }
        Ok((public, private))
    }

    /// Step 3: the internet gateway, attached; returns its id.
    async fn ensure_gateway(&self, op: &'static str, found: &Found, vpc_id: &str) -> Result<String> {
        let name = self.name("internet-gateway");
        let err = at(Piece::InternetGateway, &name);
        let (id, attached) = match self.gateway(found) {
            Some(g) => (
                g.internet_gateway_id()
                    .ok_or_else(|| err(unexpected(op, "an internet gateway has no id")))?
                    .to_string(),
                attached_to(g, vpc_id),
            ),
            None => {
                let answer = self
                    .create_call(op, "CreateInternetGateway", || {
                        self.client
                            .create_internet_gateway()
                            .tag_specifications(self.tag_spec(ResourceType::InternetGateway, &name))
                            .send()
                    })
                    .await
                    .map_err(&err)?;
                let id = answer
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .ok_or_else(|| err(unexpected(op, "CreateInternetGateway answered no gateway")))?
                    .to_string();
                tracing::info!(workspace = %self.workspace, gateway = %id, "internet gateway created");
                (id, false)
            }
        };
        if !attached {
            self.call(op, "AttachInternetGateway", || {
                self.client
                    .attach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(vpc_id)
                    .send()
            })
            .await
            .map_err(|e| err(e).with_context("gateway", &id).with_context("vpc", vpc_id))?;
        }
        Ok(id)
    }

    /// Steps 4 and 7: a route table with its default route and subnet associations.
    async fn ensure_route_table(
        &self,
        op: &'static str,
        found: &Found,
        piece: Piece,
        vpc_id: &str,
        subnets: &[String],
        target: RouteTarget<'_>,
    ) -> Result<String> {
        let name = self.name(piece.as_str());
        let err = at(piece, &name);
        let table = match self.route_table(found, &name) {
            Some(t) => t.clone(),
            None => {
                let answer = self
                    .create_call(op, "CreateRouteTable", || {
                        self.client
                            .create_route_table()
                            .vpc_id(vpc_id)
                            .tag_specifications(self.tag_spec(ResourceType::RouteTable, &name))
                            .send()
                    })
                    .await
                    .map_err(&err)?;
                let table = answer
                    .route_table()
                    .cloned()
                    .ok_or_else(|| err(unexpected(op, "CreateRouteTable answered no route table")))?;
                tracing::info!(workspace = %self.workspace, table = ?table.route_table_id(), %name, "route table created");
                table
            }
        };
        let table_id = table
            .route_table_id()
            .ok_or_else(|| err(unexpected(op, "a route table has no id")))?
            .to_string();
        let current = default_target(&table);
        if current != Some(target.id()) {
            let exists = table
                .routes()
                .iter()
                .any(|r| r.destination_cidr_block() == Some(ANYWHERE));
            if exists {
                self.call(op, "ReplaceRoute", || {
                    let r = self
                        .client
                        .replace_route()
                        .route_table_id(&table_id)
                        .destination_cidr_block(ANYWHERE);
                    match target {
                        RouteTarget::Gateway(id) => r.gateway_id(id),
                        RouteTarget::Nat(id) => r.nat_gateway_id(id),
                    }
                    .send()
                })
                .await
                .map_err(|e| err(e).with_context("route_table", &table_id))?;
            } else {
                self.call(op, "CreateRoute", || {
                    let r = self
                        .client
                        .create_route()
                        .route_table_id(&table_id)
                        .destination_cidr_block(ANYWHERE);
                    match target {
                        RouteTarget::Gateway(id) => r.gateway_id(id),
                        RouteTarget::Nat(id) => r.nat_gateway_id(id),
                    }
                    .send()
                })
                .await
                .map_err(|e| err(e).with_context("route_table", &table_id))?;
            }
        }
        for subnet in subnets {
            if associated(&table, subnet) {
                continue;
            }
            let associate = self
                .call(op, "AssociateRouteTable", || {
                    self.client
                        .associate_route_table()
                        .route_table_id(&table_id)
                        .subnet_id(subnet)
                        .send()
                })
                .await;
            match associate {
                Ok(_) => {}
                // The subnet is explicitly associated with another table: move it.
                Err(e) if ec2_code(&e) == Some("Resource.AlreadyAssociated") => {
                    self.reassociate(op, &table_id, subnet)
                        .await
                        .map_err(|e| err(e).with_context("subnet", subnet))?;
                }
                Err(e) => {
                    return Err(err(e)
                        .with_context("route_table", &table_id)
                        .with_context("subnet", subnet));
                }
            }
        }
        Ok(table_id)
    }

    async fn reassociate(&self, op: &'static str, table_id: &str, subnet: &str) -> Result<()> {
        let tables = self
            .call(op, "DescribeRouteTables", || {
                self.client
                    .describe_route_tables()
                    .filters(filter("association.subnet-id", [subnet]))
                    .send()
            })
            .await?;
        let association = tables
            .route_tables()
            .iter()
            .flat_map(|t| t.associations())
            .find(|a| a.subnet_id() == Some(subnet))
            .and_then(|a| a.route_table_association_id())
            .ok_or_else(|| unexpected(op, "EC2 says the subnet is associated but lists no association"))?
            .to_string();
        self.call(op, "ReplaceRouteTableAssociation", || {
            self.client
                .replace_route_table_association()
                .association_id(&association)
                .route_table_id(table_id)
                .send()
        })
        .await?;
        Ok(())
    }

    /// Step 5: the elastic IP; returns its allocation id.
    async fn ensure_address(&self, op: &'static str, found: &Found) -> Result<String> {
        let name = self.name("elastic-ip");
        let err = at(Piece::ElasticIp, &name);
        if let Some(a) = self.address(found) {
            return a
                .allocation_id()
                .map(str::to_string)
                .ok_or_else(|| err(unexpected(op, "an elastic IP has no allocation id")));
        }
        let answer = self
            .create_call(op, "AllocateAddress", || {
                self.client
                    .allocate_address()
                    .domain(DomainType::Vpc)
                    .tag_specifications(self.tag_spec(ResourceType::ElasticIp, &name))
                    .send()
            })
            .await
            .map_err(&err)?;
        let id = answer
            .allocation_id()
            .ok_or_else(|| err(unexpected(op, "AllocateAddress answered no allocation id")))?
            .to_string();
        tracing::info!(workspace = %self.workspace, allocation = %id, "elastic IP allocated");
        Ok(id)
    }

    /// Step 6: the NAT gateway, available; returns its id.
    async fn ensure_nat(
        &self,
        op: &'static str,
        found: &Found,
        subnet: &str,
        allocation: &str,
    ) -> Result<String> {
        let name = self.name("nat-gateway");
        let err = at(Piece::NatGateway, &name);
        let id = match self.nat_gateway(found) {
            Some(n) => n
                .nat_gateway_id()
                .ok_or_else(|| err(unexpected(op, "a NAT gateway has no id")))?
                .to_string(),
            None => {
                let answer = self
                    .create_call(op, "CreateNatGateway", || {
                        self.client
                            .create_nat_gateway()
                            .subnet_id(subnet)
                            .allocation_id(allocation)
                            .tag_specifications(self.tag_spec(ResourceType::Natgateway, &name))
                            .send()
                    })
                    .await
                    .map_err(|e| err(e).with_context("subnet", subnet))?;
                let id = answer
                    .nat_gateway()
                    .and_then(|n| n.nat_gateway_id())
                    .ok_or_else(|| err(unexpected(op, "CreateNatGateway answered no gateway")))?
                    .to_string();
                tracing::info!(workspace = %self.workspace, nat = %id, "NAT gateway created");
                id
            }
        };
        self.wait_nat(op, &id, true).await.map_err(&err)?;
        Ok(id)
    }

    /// Polls a NAT gateway until it is available (`available`) or deleted (`!available`).
    async fn wait_nat(&self, op: &'static str, id: &str, available: bool) -> Result<()> {
        let deadline = Instant::now() + self.options.nat_timeout;
        loop {
            let described = self
                .call(op, "DescribeNatGateways", || {
                    self.client.describe_nat_gateways().nat_gateway_ids(id).send()
                })
                .await;
            let state = match described {
                Ok(d) => d
                    .nat_gateways()
                    .first()
                    .map(|n| (n.state().cloned(), n.failure_message().map(str::to_string))),
                Err(e) if e.kind() == ErrorKind::NotFound && !available => None,
                Err(e) => return Err(e.with_context("nat_gateway", id)),
            };
            match (available, state) {
                (true, Some((Some(NatGatewayState::Available), _))) => return Ok(()),
                (
                    true,
                    Some((
                        Some(NatGatewayState::Failed | NatGatewayState::Deleted | NatGatewayState::Deleting),
                        why,
                    )),
                ) => {
                    return Err(Error::new(
                        ErrorKind::Unexpected,
                        format!(
                            "NAT gateway {id} failed: {}; run create again for a new one",
                            why.unwrap_or_else(|| "no reason given".to_string())
                        ),
                    )
                    .with_operation(op));
                }
                (true, None) => {
                    return Err(
                        Error::new(ErrorKind::NotFound, format!("NAT gateway {id} disappeared"))
                            .with_operation(op),
                    );
                }
                (false, None | Some((Some(NatGatewayState::Deleted | NatGatewayState::Failed), _))) => {
                    return Ok(());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "NAT gateway {id} did not become {} within {:?}",
                        if available { "available" } else { "deleted" },
                        self.options.nat_timeout
                    ),
                )
                .with_operation(op));
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    /// Step 8: the S3 gateway endpoint on the route tables; returns its id.
    async fn ensure_endpoint(
        &self,
        op: &'static str,
        found: &Found,
        vpc_id: &str,
        tables: &[String],
    ) -> Result<String> {
        let name = self.name("vpc-endpoint-s3");
        let err = at(Piece::S3Endpoint, &name);
        if let Some(endpoint) = self.endpoint(found) {
            let id = endpoint
                .vpc_endpoint_id()
                .ok_or_else(|| err(unexpected(op, "a VPC endpoint has no id")))?
                .to_string();
            let have: BTreeSet<&str> = endpoint.route_table_ids().iter().map(String::as_str).collect();
            let add: Vec<String> = tables
                .iter()
                .filter(|t| !have.contains(t.as_str()))
                .cloned()
                .collect();
            if !add.is_empty() {
                self.call(op, "ModifyVpcEndpoint", || {
                    self.client
                        .modify_vpc_endpoint()
                        .vpc_endpoint_id(&id)
                        .set_add_route_table_ids(Some(add.clone()))
                        .send()
                })
                .await
                .map_err(|e| err(e).with_context("endpoint", &id))?;
            }
            return Ok(id);
        }
        let service = format!("com.amazonaws.{}.s3", self.settings.region);
        let answer = self
            .create_call(op, "CreateVpcEndpoint", || {
                self.client
                    .create_vpc_endpoint()
                    .vpc_id(vpc_id)
                    .service_name(&service)
                    .vpc_endpoint_type(VpcEndpointType::Gateway)
                    .set_route_table_ids(Some(tables.to_vec()))
                    .tag_specifications(self.tag_spec(ResourceType::VpcEndpoint, &name))
                    .send()
            })
            .await
            .map_err(|e| err(e).with_context("service", &service))?;
        let id = answer
            .vpc_endpoint()
            .and_then(|e| e.vpc_endpoint_id())
            .ok_or_else(|| err(unexpected(op, "CreateVpcEndpoint answered no endpoint")))?
            .to_string();
        tracing::info!(workspace = %self.workspace, endpoint = %id, "S3 endpoint created");
        Ok(id)
    }

    /// Step 9: the security group; returns it (as found or created).
    async fn ensure_security_group(
        &self,
        op: &'static str,
        found: &Found,
        vpc_id: &str,
    ) -> Result<SecurityGroup> {
        let name = self.security_group_name();
        let err = at(Piece::SecurityGroup, &name);
        if let Some(group) = self.security_group(found) {
            return Ok(group.clone());
        }
        let answer = self
            .create_call(op, "CreateSecurityGroup", || {
                self.client
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("CloudTik workspace {}", self.workspace))
                    .vpc_id(vpc_id)
                    .tag_specifications(self.tag_spec(ResourceType::SecurityGroup, &name))
                    .send()
            })
            .await
            .map_err(&err)?;
        let id = answer
            .group_id()
            .ok_or_else(|| err(unexpected(op, "CreateSecurityGroup answered no group id")))?
            .to_string();
        tracing::info!(workspace = %self.workspace, group = %id, "security group created");
        Ok(SecurityGroup::builder()
            .group_id(id)
            .group_name(&name)
            .vpc_id(vpc_id)
            .build())
    }

    /// The ingress rules the security group must have; `working_cidr`: the working VPC's
    /// range, let in when peering wants it.
    fn wanted_rules(&self, group_id: &str, vpc_cidr: &str, working_cidr: Option<&str>) -> BTreeSet<Rule> {
        let mut rules = BTreeSet::new();
        rules.insert(Rule {
            protocol: "-1".to_string(),
            ports: None,
            source: Source::Group(group_id.to_string()),
        });
        for cidr in
            std::iter::once(vpc_cidr).chain(self.options.allowed_ssh_sources.iter().map(String::as_str))
        {
            let source = if cidr.contains(':') {
                Source::Cidr6(cidr.to_string())
            } else if cidr.contains('/') {
                Source::Cidr(cidr.to_string())
            } else {
                Source::Cidr(format!("{cidr}/32"))
            };
            rules.insert(Rule {
                protocol: "tcp".to_string(),
                ports: Some((22, 22)),
                source,
            });
        }
        if let Some(cidr) = working_cidr {
            let ssh_only = self.options.peering.as_ref().is_none_or(|p| p.allow_ssh_only);
            rules.insert(Rule {
                protocol: "tcp".to_string(),
                ports: Some(if ssh_only { (22, 22) } else { (0, 65535) }),
                source: Source::Cidr(cidr.to_string()),
            });
        }
        rules
    }

    /// Makes the group's ingress rules exactly the wanted ones (authorizing the missing,
    /// revoking the others).
    async fn apply_rules(
        &self,
        op: &'static str,
        group: &SecurityGroup,
        vpc_cidr: &str,
        working_cidr: Option<&str>,
    ) -> Result<()> {
        let name = self.security_group_name();
        let err = at(Piece::SecurityGroup, &name);
        let id = group
            .group_id()
            .ok_or_else(|| err(unexpected(op, "a security group has no id")))?
            .to_string();
        let wanted = self.wanted_rules(&id, vpc_cidr, working_cidr);
        let current: BTreeSet<Rule> = group.ip_permissions().iter().flat_map(rules_of).collect();
        let revoke: Vec<IpPermission> = current.difference(&wanted).map(Rule::permission).collect();
        let authorize: Vec<IpPermission> = wanted.difference(&current).map(Rule::permission).collect();
        if !revoke.is_empty() {
            self.call(op, "RevokeSecurityGroupIngress", || {
                self.client
                    .revoke_security_group_ingress()
                    .group_id(&id)
                    .set_ip_permissions(Some(revoke.clone()))
                    .send()
            })
            .await
            .map_err(|e| err(e).with_context("group", &id))?;
        }
        if !authorize.is_empty() {
            let result = self
                .call(op, "AuthorizeSecurityGroupIngress", || {
                    self.client
                        .authorize_security_group_ingress()
                        .group_id(&id)
                        .set_ip_permissions(Some(authorize.clone()))
                        .send()
                })
                .await;
            match result {
                Ok(_) => {}
                // Added by a concurrent run since the group was read.
                Err(e) if ec2_code(&e) == Some("InvalidPermission.Duplicate") => {}
                Err(e) => return Err(err(e).with_context("group", &id)),
            }
        }
        Ok(())
    }

    /// The group with its current rules.
    async fn describe_group(&self, op: &'static str, id: &str) -> Result<SecurityGroup> {
        let described = self
            .call(op, "DescribeSecurityGroups", || {
                self.client.describe_security_groups().group_ids(id).send()
            })
            .await?;
        described.security_groups().first().cloned().ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("security group {id} is gone")).with_operation(op)
        })
    }

    /// Instances that keep the workspace in use: in the created VPC (a working VPC: in
    /// the workspace's subnets), or tagged with the workspace.
    async fn instances(&self, op: &'static str, found: &Found) -> Result<Vec<Instance>> {
        let states = filter("instance-state-name", LIVE_STATES);
        let mut queries = vec![vec![self.workspace_filter(), states.clone()]];
        let created_vpc = found
            .vpc
            .as_ref()
            .filter(|v| tag_value(v.tags(), VPC_ORIGIN_TAG) == Some("created"))
            .and_then(|v| v.vpc_id());
        if let Some(vpc) = created_vpc {
            queries.push(vec![filter("vpc-id", [vpc]), states.clone()]);
        } else {
            let subnets: Vec<&str> = found.subnets.iter().filter_map(|s| s.subnet_id()).collect();
            if !subnets.is_empty() {
                queries.push(vec![filter("subnet-id", subnets), states.clone()]);
            }
        }
        let mut all: BTreeMap<String, Instance> = BTreeMap::new();
        for filters in queries {
            let mut next: Option<String> = None;
            loop {
                let page = self
                    .call(op, "DescribeInstances", || {
                        self.client
                            .describe_instances()
                            .set_filters(Some(filters.clone()))
                            .set_next_token(next.clone())
                            .send()
                    })
                    .await?;
                for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                    if let Some(id) = instance.instance_id() {
                        all.insert(id.to_string(), instance.clone());
                    }
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        Ok(all.into_values().collect())
    }

    // ---- delete steps ----

    /// Removes the routes through the workspace's peering connections (in both VPCs,
    /// also those of connections that are deleted already) and deletes the live
    /// connections.
    async fn delete_peering(&self, op: &'static str, found: &Found) -> Result<()> {
        let name = self.peering_name();
        let err = at(Piece::VpcPeering, &name);
        let ids: Vec<String> = found
            .peerings
            .iter()
            .filter_map(|p| p.vpc_peering_connection_id())
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let tables = self
            .call(op, "DescribeRouteTables", || {
                self.client
                    .describe_route_tables()
                    .filters(filter("route.vpc-peering-connection-id", ids.clone()))
                    .send()
            })
            .await
            .map_err(&err)?;
        for table in tables.route_tables() {
            let Some(table_id) = table.route_table_id() else {
                continue;
            };
            for route in table.routes() {
                let through_ours = route
                    .vpc_peering_connection_id()
                    .is_some_and(|p| ids.iter().any(|id| id == p));
                let Some(destination) = route.destination_cidr_block().filter(|_| through_ours) else {
                    continue;
                };
                self.delete_call(op, "DeleteRoute", || {
                    self.client
                        .delete_route()
                        .route_table_id(table_id)
                        .destination_cidr_block(destination)
                        .send()
                })
                .await
                .map_err(|e| {
                    err(e)
                        .with_context("route_table", table_id)
                        .with_context("destination", destination)
                })?;
            }
        }
        for peering in found.peerings.iter().filter(|p| peering_live(p)) {
            let Some(id) = peering.vpc_peering_connection_id() else {
                continue;
            };
            self.delete_call(op, "DeleteVpcPeeringConnection", || {
                self.client
                    .delete_vpc_peering_connection()
                    .vpc_peering_connection_id(id)
                    .send()
            })
            .await
            .map_err(|e| err(e).with_context("peering", id))?;
            tracing::info!(workspace = %self.workspace, peering = %id, "VPC peering connection deleted");
        }
        Ok(())
    }

    async fn delete_route_tables(&self, op: &'static str, found: &Found, piece: Piece) -> Result<()> {
        let name = self.name(piece.as_str());
        let err = at(piece, &name);
        for table in found
            .route_tables
            .iter()
            .filter(|t| tag_value(t.tags(), NAME_TAG) == Some(name.as_str()))
        {
            let Some(id) = table.route_table_id() else {
                continue;
            };
            for association in table.associations() {
                if association.main() == Some(true) {
                    continue;
                }
                if let Some(a) = association.route_table_association_id() {
                    self.delete_call(op, "DisassociateRouteTable", || {
                        self.client.disassociate_route_table().association_id(a).send()
                    })
                    .await
                    .map_err(|e| err(e).with_context("route_table", id))?;
                }
            }
            self.delete_call(op, "DeleteRouteTable", || {
                self.client.delete_route_table().route_table_id(id).send()
            })
            .await
            .map_err(|e| err(e).with_context("route_table", id))?;
        }
        Ok(())
    }
}

/// Where a default route goes.
#[derive(Debug, Clone, Copy)]
enum RouteTarget<'a> {
    Gateway(&'a str),
    Nat(&'a str),
}

impl RouteTarget<'_> {
    fn id(&self) -> &str {
        match self {
            RouteTarget::Gateway(id) | RouteTarget::Nat(id) => id,
        }
    }
}

/// Where one ingress rule lets traffic come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Cidr(String),
    Cidr6(String),
    Group(String),
    PrefixList(String),
}

/// One ingress rule: a protocol, a port range and one source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rule {
    protocol: String,
    ports: Option<(i32, i32)>,
    source: Source,
}

impl Rule {
    fn permission(&self) -> IpPermission {
        let mut p = IpPermission::builder().ip_protocol(&self.protocol);
        if let Some((from, to)) = self.ports {
            p = p.from_port(from).to_port(to);
        }
        match &self.source {
            Source::Cidr(c) => p.ip_ranges(IpRange::builder().cidr_ip(c).build()),
            Source::Cidr6(c) => p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
            Source::Group(g) => p.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build()),
            Source::PrefixList(l) => p.prefix_list_ids(PrefixListId::builder().prefix_list_id(l).build()),
        }
        .build()
    }
}

/// The rules of a permission, one per source.
fn rules_of(p: &IpPermission) -> Vec<Rule> {
    let protocol = match p.ip_protocol().unwrap_or("-1") {
        "6" => "tcp",
        "17" => "udp",
        "1" => "icmp",
        other => other,
    }
    .to_string();
    let ports = if protocol == "-1" {
        None
    } else {
        match (p.from_port(), p.to_port()) {
            (Some(f), Some(t)) => Some((f, t)),
            _ => None,
        }
    };
    let rule = |source| Rule {
        protocol: protocol.clone(),
        ports,
        source,
    };
    let mut rules = Vec::new();
    rules.extend(
        p.ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip())
            .map(|c| rule(Source::Cidr(c.to_string()))),
    );
    rules.extend(
        p.ipv6_ranges()
            .iter()
            .filter_map(|r| r.cidr_ipv6())
            .map(|c| rule(Source::Cidr6(c.to_string()))),
    );
    rules.extend(
        p.user_id_group_pairs()
            .iter()
            .filter_map(|g| g.group_id())
            .map(|g| rule(Source::Group(g.to_string()))),
    );
    rules.extend(
        p.prefix_list_ids()
            .iter()
            .filter_map(|l| l.prefix_list_id())
            .map(|l| rule(Source::PrefixList(l.to_string()))),
    );
    rules
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The item of `items` whose `Name` tag is `name`.
fn named<'a, T>(items: &'a [T], tags: impl Fn(&T) -> &[Tag], name: &str) -> Option<&'a T> {
    items.iter().find(|i| tag_value(tags(i), NAME_TAG) == Some(name))
}

fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn filter<V: Into<String>>(name: impl Into<String>, values: impl IntoIterator<Item = V>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

fn unexpected(op: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::Unexpected, message).with_operation(op)
}

fn vpc_id_cidr(vpc: &Vpc) -> Result<(String, String)> {
    match (vpc.vpc_id(), vpc.cidr_block()) {
        (Some(id), Some(cidr)) => Ok((id.to_string(), cidr.to_string())),
        _ => Err(Error::new(
            ErrorKind::Unexpected,
            "a VPC without id or IPv4 range",
        )),
    }
}

fn attached_to(gateway: &InternetGateway, vpc_id: &str) -> bool {
    gateway.attachments().iter().any(|a| {
        a.vpc_id() == Some(vpc_id)
            && a.state()
                .is_none_or(|s| matches!(s.as_str(), "available" | "attached" | "attaching"))
    })
}

/// The gateway or NAT gateway the default route of a table goes to.
fn default_target(table: &RouteTable) -> Option<&str> {
    table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(ANYWHERE))
        .and_then(|r| r.gateway_id().or(r.nat_gateway_id()))
}

fn associated(table: &RouteTable, subnet: &str) -> bool {
    table.associations().iter().any(|a| a.subnet_id() == Some(subnet))
}

fn peering_state(p: &VpcPeeringConnection) -> Option<&VpcPeeringConnectionStateReasonCode> {
    p.status().and_then(|s| s.code())
}

/// A peering connection that is (or may become) usable: not deleted, rejected, failed
/// or expired.
fn peering_live(p: &VpcPeeringConnection) -> bool {
    use VpcPeeringConnectionStateReasonCode as Code;
    !matches!(
        peering_state(p),
        Some(Code::Deleted | Code::Deleting | Code::Expired | Code::Failed | Code::Rejected)
    )
}

/// The VPC a peering connection comes from (the working VPC).
fn requester_vpc_id(p: &VpcPeeringConnection) -> Option<&str> {
    p.requester_vpc_info().and_then(|i| i.vpc_id())
}

/// The VPC a peering connection goes to (the workspace's).
fn accepter_vpc_id(p: &VpcPeeringConnection) -> Option<&str> {
    p.accepter_vpc_info().and_then(|i| i.vpc_id())
}

/// Whether `table` sends `destination` through the peering connection `pcx`.
fn routes_via(table: &RouteTable, destination: &str, pcx: &str) -> bool {
    table.routes().iter().any(|r| {
        r.destination_cidr_block() == Some(destination) && r.vpc_peering_connection_id() == Some(pcx)
    })
}

/// Where a route goes, for messages.
fn route_target(r: &Route) -> &str {
    r.gateway_id()
        .or(r.nat_gateway_id())
        .or(r.vpc_peering_connection_id())
        .or(r.transit_gateway_id())
        .or(r.network_interface_id())
        .or(r.instance_id())
        .unwrap_or("another target")
}

/// Whether two IPv4 ranges share an address (false when either is not an IPv4 range).
fn overlaps(a: &str, b: &str) -> bool {
    let span = |c: &str| {
        parse_cidr(c).map(|(ip, bits)| {
            let start = u64::from(ip);
            (start, start + (1u64 << (32 - bits)))
        })
    };
    match (span(a), span(b)) {
        (Some((s1, e1)), Some((s2, e2))) => s1 < e2 && s2 < e1,
        _ => false,
    }
}

/// The range of a VPC to be peered: `configured` when it overlaps none of `used`, else
/// the first `10.X.0.0/16` that overlaps none.
fn peering_cidr(configured: &str, used: &[&str]) -> Option<String> {
    std::iter::once(configured.to_string())
        .chain((0..=255).map(|x| format!("10.{x}.0.0/16")))
        .find(|c| used.iter().all(|u| !overlaps(c, u)))
}

/// An IPv4 range as (network address, prefix length).
fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    Some((u32::from(ip) & mask, bits))
}

/// `count` blocks of size `/prefix` inside `range` that overlap none of `used`, lowest
/// first; `None` when there are not enough.
fn free_blocks(range: &str, used: &[&str], prefix: u8, count: usize) -> Option<Vec<String>> {
    let (base, bits) = parse_cidr(range)?;
    if bits > prefix {
        return None;
    }
    let size = 1u64 << (32 - prefix);
    let blocks = 1u64 << (prefix - bits);
    let used: Vec<(u64, u64)> = used
        .iter()
        .filter_map(|c| parse_cidr(c))
        .map(|(ip, b)| (u64::from(ip), u64::from(ip) + (1u64 << (32 - b))))
        .collect();
    let mut free = Vec::new();
    for i in 0..blocks {
        if free.len() == count {
            break;
        }
        let start = u64::from(base) + i * size;
        let end = start + size;
        if used.iter().all(|(s, e)| end <= *s || start >= *e) {
            let ip = Ipv4Addr::from(u32::try_from(start).ok()?);
            free.push(format!("{ip}/{prefix}"));
        }
    }
    (free.len() == count).then_some(free)
}

/// This machine's primary IPv4 address (the source of its default route; no packet is
/// sent).
fn local_ipv4() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("169.254.169.254:80").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[async_trait]
impl WorkspaceProvider for AwsWorkspaceProvider {
    fn provider_type(&self) -> &str {
        PROVIDER_TYPE
    }

    fn workspace_name(&self) -> &str {
        &self.workspace
    }

    async fn create_workspace(&self) -> Result<()> {
        const OP: &str = "create_workspace";
        let mut found = self.find(OP).await?;
        let working = match &self.options.peering {
            Some(wanted) => Some(
                self.working_vpc(OP, &found, wanted)
                    .await
                    .map_err(at(Piece::VpcPeering, &self.peering_name()))?,
            ),
            None => None,
        };
        let (vpc_id, vpc_cidr) = self.ensure_vpc(OP, &found, working.as_ref()).await?;
        if found.vpc.is_none() {
            // Look again with the VPC known: a working VPC's own internet gateway.
            found = self.find(OP).await?;
        }
        let (public, private) = self.ensure_subnets(OP, &found, &vpc_id, &vpc_cidr).await?;
        let gateway = self.ensure_gateway(OP, &found, &vpc_id).await?;
        let public_table = self
            .ensure_route_table(
                OP,
                &found,
                Piece::PublicRouteTable,
                &vpc_id,
                &public,
                RouteTarget::Gateway(&gateway),
            )
            .await?;
        let allocation = self.ensure_address(OP, &found).await?;
        let nat = self.ensure_nat(OP, &found, &public[0], &allocation).await?;
        let private_table = self
            .ensure_route_table(
                OP,
                &found,
                Piece::PrivateRouteTable,
                &vpc_id,
                &private,
                RouteTarget::Nat(&nat),
            )
            .await?;
        let tables = [public_table, private_table];
        self.ensure_endpoint(OP, &found, &vpc_id, &tables).await?;
        let group = self.ensure_security_group(OP, &found, &vpc_id).await?;
        let allow_working = self
            .options
            .peering
            .as_ref()
            .is_some_and(|p| p.allow_working_subnet);
        let working_cidr = working
            .as_ref()
            .filter(|_| allow_working)
            .map(|w| w.cidr.as_str());
        self.apply_rules(OP, &group, &vpc_cidr, working_cidr).await?;
        if let Some(working) = &working {
            self.ensure_peering(OP, &found, &vpc_id, &vpc_cidr, working, &tables)
                .await?;
        }
        let mut profiles_changed = false;
        for (kind, iam) in [(RoleKind::Head, &found.head), (RoleKind::Worker, &found.worker)] {
            profiles_changed |= self.ensure_role(OP, kind, iam).await?;
        }
        if self.options.managed_cloud_storage {
            self.ensure_bucket(OP, found.bucket).await?;
        }
        if profiles_changed && !self.options.iam_propagation_wait.is_zero() {
            tracing::info!(wait = ?self.options.iam_propagation_wait, "waiting for IAM to propagate the instance profiles");
            tokio::time::sleep(self.options.iam_propagation_wait).await;
        }
        tracing::info!(workspace = %self.workspace, vpc = %vpc_id, "workspace complete");
        Ok(())
    }

    async fn delete_workspace(&self, options: DeleteWorkspaceOptions) -> Result<()> {
        const OP: &str = "delete_workspace";
        let found = self.find(OP).await?;
        let instances = self.instances(OP, &found).await?;
        if !instances.is_empty() {
            let is_stopped = |i: &&Instance| {
                matches!(
                    i.state().and_then(|s| s.name()),
                    Some(
                        aws_sdk_ec2::types::InstanceStateName::Stopping
                            | aws_sdk_ec2::types::InstanceStateName::Stopped
                    )
                )
            };
            // Clusters with a pending or running instance, and the stopped instances
            // (kept by `cache_stopped_nodes`) of clusters with none running.
            let clusters: BTreeSet<&str> = instances
                .iter()
                .filter(|i| !is_stopped(i))
                .filter_map(|i| tag_value(i.tags(), tags::CLUSTER_NAME))
                .collect();
            let mut stopped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for i in instances.iter().filter(is_stopped) {
                if let (Some(cluster), Some(id)) = (tag_value(i.tags(), tags::CLUSTER_NAME), i.instance_id())
                    && !clusters.contains(cluster)
                {
                    stopped.entry(cluster).or_default().push(id);
                }
            }
            let others: Vec<&str> = instances
                .iter()
                .filter(|i| tag_value(i.tags(), tags::CLUSTER_NAME).is_none())
                .filter_map(|i| i.instance_id())
                .collect();
            let mut what = Vec::new();
            if !clusters.is_empty() {
                what.push(format!(
                    "clusters {} (stop them first: `cloudtik stop`)",
                    clusters.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            for (cluster, ids) in &stopped {
                what.push(format!(
                    "stopped instances {} of cluster {cluster}, kept for reuse by cache_stopped_nodes \
                     (terminate them: AwsNodeProvider::terminate_stopped_nodes for cluster {cluster}, \
                     or `aws ec2 terminate-instances --instance-ids {}`)",
                    ids.join(", "),
                    ids.join(" ")
                ));
            }
            if !others.is_empty() {
                what.push(format!(
                    "instances {} that are not CloudTik nodes",
                    others.join(", ")
                ));
            }
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "workspace {} still has {} instance(s): {}",
                    self.workspace,
                    instances.len(),
                    what.join("; ")
                ),
            )
            .with_operation(OP));
        }

        if found.bucket && options.delete_managed_storage {
            self.delete_bucket(OP).await?;
        }
        for (kind, iam) in [(RoleKind::Worker, &found.worker), (RoleKind::Head, &found.head)] {
            self.delete_role(OP, kind, iam).await?;
        }
        self.delete_peering(OP, &found).await?;

        let sg_name = self.security_group_name();
        for group in &found.security_groups {
            let Some(id) = group.group_id() else { continue };
            self.delete_call(OP, "DeleteSecurityGroup", || {
                self.client.delete_security_group().group_id(id).send()
            })
            .await
            .map_err(|e| at(Piece::SecurityGroup, &sg_name)(e).with_context("group", id))?;
        }

        let endpoint_ids: Vec<String> = found
            .endpoints
            .iter()
            .filter_map(|e| e.vpc_endpoint_id())
            .map(str::to_string)
            .collect();
        if !endpoint_ids.is_empty() {
            let name = self.name("vpc-endpoint-s3");
            self.delete_call(OP, "DeleteVpcEndpoints", || {
                self.client
                    .delete_vpc_endpoints()
                    .set_vpc_endpoint_ids(Some(endpoint_ids.clone()))
                    .send()
            })
            .await
            .map_err(at(Piece::S3Endpoint, &name))?;
        }

        self.delete_route_tables(OP, &found, Piece::PrivateRouteTable)
            .await?;

        let nat_name = self.name("nat-gateway");
        for nat in &found.nat_gateways {
            let Some(id) = nat.nat_gateway_id() else { continue };
            let err = |e: Error| at(Piece::NatGateway, &nat_name)(e).with_context("nat_gateway", id);
            self.delete_call(OP, "DeleteNatGateway", || {
                self.client.delete_nat_gateway().nat_gateway_id(id).send()
            })
            .await
            .map_err(err)?;
            self.wait_nat(OP, id, false).await.map_err(err)?;
        }

        let eip_name = self.name("elastic-ip");
        for address in &found.addresses {
            let Some(id) = address.allocation_id() else {
                continue;
            };
            self.delete_call(OP, "ReleaseAddress", || {
                self.client.release_address().allocation_id(id).send()
            })
            .await
            .map_err(|e| at(Piece::ElasticIp, &eip_name)(e).with_context("allocation", id))?;
        }

        self.delete_route_tables(OP, &found, Piece::PublicRouteTable)
            .await?;

        let igw_name = self.name("internet-gateway");
        for gateway in found.gateways.iter().filter(|g| self.is_ours(g.tags())) {
            let Some(id) = gateway.internet_gateway_id() else {
                continue;
            };
            let err = |e: Error| at(Piece::InternetGateway, &igw_name)(e).with_context("gateway", id);
            for attachment in gateway.attachments() {
                let Some(vpc) = attachment.vpc_id() else { continue };
                let detached = self
                    .delete_call(OP, "DetachInternetGateway", || {
                        self.client
                            .detach_internet_gateway()
                            .internet_gateway_id(id)
                            .vpc_id(vpc)
                            .send()
                    })
                    .await;
                match detached {
                    Ok(()) => {}
                    Err(e) if ec2_code(&e) == Some("Gateway.NotAttached") => {}
                    Err(e) => return Err(err(e)),
                }
            }
            self.delete_call(OP, "DeleteInternetGateway", || {
                self.client
                    .delete_internet_gateway()
                    .internet_gateway_id(id)
                    .send()
            })
            .await
            .map_err(err)?;
        }

        for subnet in &found.subnets {
            let Some(id) = subnet.subnet_id() else { continue };
            let name = tag_value(subnet.tags(), NAME_TAG).unwrap_or(id);
            let piece = if name.contains("-public-subnet-") {
                Piece::PublicSubnets
            } else {
                Piece::PrivateSubnets
            };
            self.delete_call(OP, "DeleteSubnet", || {
                self.client.delete_subnet().subnet_id(id).send()
            })
            .await
            .map_err(|e| at(piece, name)(e).with_context("subnet", id))?;
        }

        if let Some(vpc) = &found.vpc
            && let Some(id) = vpc.vpc_id()
        {
            let name = self.name("vpc");
            let err = |e: Error| at(Piece::Vpc, &name)(e).with_context("vpc", id);
            if tag_value(vpc.tags(), VPC_ORIGIN_TAG) == Some("created") {
                self.delete_call(OP, "DeleteVpc", || self.client.delete_vpc().vpc_id(id).send())
                    .await
                    .map_err(err)?;
            } else {
                self.delete_call(OP, "DeleteTags", || {
                    self.client
                        .delete_tags()
                        .resources(id)
                        .tags(Tag::builder().key(WORKSPACE_TAG).build())
                        .tags(Tag::builder().key(VPC_ORIGIN_TAG).build())
                        .send()
                })
                .await
                .map_err(err)?;
            }
        }
        tracing::info!(workspace = %self.workspace, "workspace deleted");
        Ok(())
    }

    async fn update_workspace(&self) -> Result<()> {
        const OP: &str = "update_workspace";
        let found = self.find(OP).await?;
        let (Some(vpc), Some(group)) = (&found.vpc, self.security_group(&found)) else {
            let (missing, _) = self.missing(&found);
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "workspace {} has no VPC or security group to update (missing: {}): run `cloudtik workspace \
                     create`",
                    self.workspace,
                    missing.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
            .with_operation(OP));
        };
        let (_, cidr) = vpc_id_cidr(vpc)?;
        let id = group.group_id().unwrap_or_default();
        let group = self.describe_group(OP, id).await?;
        let working_cidr = self.working_rule_cidr(OP, &found).await?;
        self.apply_rules(OP, &group, &cidr, working_cidr.as_deref())
            .await?;
        if self.options.managed_cloud_storage {
            self.ensure_bucket(OP, found.bucket).await?;
        }
        Ok(())
    }

    async fn workspace_existence(&self) -> Result<WorkspaceExistence> {
        let found = self.find("workspace_existence").await?;
        let (missing, any) = self.missing(&found);
        Ok(if !any {
            WorkspaceExistence::NotExist
        } else if missing.is_empty() {
            WorkspaceExistence::Completed
        } else {
            WorkspaceExistence::Incomplete {
                missing: missing.iter().map(|p| p.as_str().to_string()).collect(),
            }
        })
    }

    async fn workspace_info(&self) -> Result<serde_json::Value> {
        const OP: &str = "workspace_info";
        let found = self.find(OP).await?;
        let (missing, any) = self.missing(&found);
        if !any {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "workspace {} does not exist in {}: create it with `cloudtik workspace create`",
                    self.workspace, self.settings.region
                ),
            )
            .with_operation(OP));
        }
        let subnet_info = |subnets: Vec<&Subnet>| {
            subnets
                .iter()
                .map(|s| {
                    json!({
                        "id": s.subnet_id(),
                        "name": tag_value(s.tags(), NAME_TAG),
                        "cidr": s.cidr_block(),
                        "availability_zone": s.availability_zone(),
                    })
                })
                .collect::<Vec<_>>()
        };
        let table_id = |piece: Piece| {
            self.route_table(&found, &self.name(piece.as_str()))
                .and_then(|t| t.route_table_id())
        };
        let address = self.address(&found);
        let vpc = found.vpc.as_ref();
        Ok(json!({
            "provider": PROVIDER_TYPE,
            "workspace_name": self.workspace,
            "region": self.settings.region,
            "vpc_id": vpc.and_then(|v| v.vpc_id()),
            "vpc_cidr": vpc.and_then(|v| v.cidr_block()),
            "working_vpc": vpc.is_some_and(|v| tag_value(v.tags(), VPC_ORIGIN_TAG) == Some("working")),
            "public_subnets": subnet_info(self.public_subnets(&found)),
            "private_subnets": subnet_info(self.private_subnets(&found)),
            "internet_gateway_id": self.gateway(&found).and_then(|g| g.internet_gateway_id()),
            "public_route_table_id": table_id(Piece::PublicRouteTable),
            "elastic_ip": address.map(|a| json!({
                "allocation_id": a.allocation_id(),
                "public_ip": a.public_ip(),
            })),
            "nat_gateway_id": self.nat_gateway(&found).and_then(|n| n.nat_gateway_id()),
            "private_route_table_id": table_id(Piece::PrivateRouteTable),
            "s3_endpoint_id": self.endpoint(&found).and_then(|e| e.vpc_endpoint_id()),
            "security_group_id": self.security_group(&found).and_then(|g| g.group_id()),
            "security_group_name": self.security_group_name(),
            "vpc_peering": self.peering(&found).map(|p| json!({
                "id": p.vpc_peering_connection_id(),
                "name": self.peering_name(),
                "status": peering_state(p).map(|s| s.as_str()),
                "working_vpc_id": requester_vpc_id(p),
                "working_vpc_cidr": p.requester_vpc_info().and_then(|i| i.cidr_block()),
            })),
            "head_role_arn": found.head.role_arn,
            "head_instance_profile": self.profile_name(RoleKind::Head),
            "head_instance_profile_arn": found.head.profile_arn,
            "worker_role_arn": found.worker.role_arn,
            "worker_instance_profile": self.profile_name(RoleKind::Worker),
            "worker_instance_profile_arn": found.worker.profile_arn,
            "missing": missing.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "managed_cloud_storage": found.bucket.then(|| json!({
                "bucket": self.bucket_name(),
                "uri": format!("s3://{}", self.bucket_name()),
            })),
        }))
    }

    async fn list_clusters(&self) -> Result<Vec<String>> {
        const OP: &str = "list_clusters";
        let found = self.find(OP).await?;
        let instances = self.instances(OP, &found).await?;
        let clusters: BTreeSet<String> = instances
            .iter()
            .filter(|i| {
                matches!(
                    i.state().and_then(|s| s.name()),
                    Some(
                        aws_sdk_ec2::types::InstanceStateName::Pending
                            | aws_sdk_ec2::types::InstanceStateName::Running
                    )
                )
            })
            .filter_map(|i| tag_value(i.tags(), tags::CLUSTER_NAME))
            .map(str::to_string)
            .collect();
        Ok(clusters.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_blocks_skip_used_ranges() {
        assert_eq!(
            free_blocks("10.0.0.0/16", &[], 24, 3).unwrap(),
            vec!["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"]
        );
        assert_eq!(
            free_blocks("10.0.0.0/16", &["10.0.0.0/23", "10.0.3.128/25"], 24, 2).unwrap(),
            vec!["10.0.2.0/24", "10.0.4.0/24"]
        );
        assert_eq!(free_blocks("172.31.0.0/24", &["172.31.0.0/26"], 24, 1), None);
        assert_eq!(free_blocks("10.0.0.0/23", &[], 24, 2).unwrap().len(), 2);
        assert_eq!(free_blocks("10.0.0.0/23", &[], 24, 3), None);
    }

    #[test]
    fn permissions_flatten_to_rules_and_back() {
        let p = IpPermission::builder()
            .ip_protocol("6")
            .from_port(22)
            .to_port(22)
            .ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/16").build())
            .ip_ranges(IpRange::builder().cidr_ip("1.2.3.4/32").build())
            .build();
        let rules = rules_of(&p);
        assert_eq!(rules.len(), 2);
        assert!(
            rules
                .iter()
                .all(|r| r.protocol == "tcp" && r.ports == Some((22, 22)))
        );
        let all = IpPermission::builder()
            .ip_protocol("-1")
            .from_port(-1)
            .to_port(-1)
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-1").build())
            .build();
        let rule = rules_of(&all).remove(0);
        assert_eq!(rule.ports, None);
        assert_eq!(rules_of(&rule.permission()), vec![rule]);
    }

    #[test]
    fn options_come_from_the_provider_section() {
        let config: crate::provider_config::AwsProviderConfig = serde_json::from_value(json!({
            "region": "us-west-2",
            "availability_zone": "us-west-2a, us-west-2b",
            "use_working_vpc": true,
            "allowed_ssh_sources": ["1.2.3.0/24"],
        }))
        .unwrap();
        let options = AwsWorkspaceOptions::from_provider_config(&config);
        assert_eq!(options.availability_zones, vec!["us-west-2a", "us-west-2b"]);
        assert_eq!(options.vpc, WorkspaceVpc::Working { vpc_id: None });
        assert_eq!(options.allowed_ssh_sources, vec!["1.2.3.0/24"]);
        assert_eq!(options.peering, None);
    }

    #[test]
    fn internal_ips_use_the_working_vpc_or_peer_with_it() {
        let options = |provider: serde_json::Value| {
            let config: crate::provider_config::AwsProviderConfig = serde_json::from_value(provider).unwrap();
            AwsWorkspaceOptions::from_provider_config(&config)
        };
        // As CloudTik: use_working_vpc defaults to true with use_internal_ips.
        let working = options(json!({"region": "r", "use_internal_ips": true, "working_vpc_id": "vpc-1"}));
        assert_eq!(
            working.vpc,
            WorkspaceVpc::Working {
                vpc_id: Some("vpc-1".into())
            }
        );
        assert_eq!(working.peering, None);
        let peered = options(json!({
            "region": "r",
            "use_internal_ips": true,
            "use_working_vpc": false,
            "working_vpc_id": "vpc-1",
            "peering_firewall_allow_ssh_only": false,
        }));
        assert!(matches!(peered.vpc, WorkspaceVpc::Create { .. }));
        assert_eq!(
            peered.peering,
            Some(VpcPeering::new(Some("vpc-1".into())).with_firewall(true, false))
        );
        // Without use_internal_ips there is nothing to peer.
        let public = options(json!({"region": "r", "use_working_vpc": false}));
        assert!(matches!(public.vpc, WorkspaceVpc::Create { .. }));
        assert_eq!(public.peering, None);
    }

    #[test]
    fn a_peered_range_overlaps_nothing_the_working_vpc_uses() {
        assert!(overlaps("10.0.0.0/16", "10.0.5.0/24"));
        assert!(overlaps("10.0.5.0/24", "10.0.0.0/8"));
        assert!(!overlaps("10.1.0.0/16", "10.0.0.0/16"));
        assert!(!overlaps("10.1.0.0/16", "pl-123"));
        assert_eq!(
            peering_cidr("10.0.0.0/16", &["172.31.0.0/16"]).unwrap(),
            "10.0.0.0/16"
        );
        assert_eq!(
            peering_cidr("10.0.0.0/16", &["10.0.0.0/16"]).unwrap(),
            "10.1.0.0/16"
        );
        assert_eq!(
            peering_cidr("10.0.0.0/16", &["10.0.0.0/15", "10.2.128.0/17"]).unwrap(),
            "10.3.0.0/16"
        );
        assert_eq!(peering_cidr("10.0.0.0/16", &["10.0.0.0/8"]), None);
    }
}
