//! [`AwsWorkspaceProvider`]: a workspace as a VPC and its network pieces on EC2.

mod cidr;
mod create;
mod delete;
mod find;
mod iam;
mod network;
mod options;
mod peering;
mod security_group;
mod storage;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    Address, AttributeBooleanValue, DomainType, Instance, InternetGateway, IpPermission, IpRange, Ipv6Range,
    NatGateway, NatGatewayState, PrefixListId, ResourceType, Route, RouteState, RouteTable, SecurityGroup,
    Subnet, Tag, TagSpecification, UserIdGroupPair, Vpc, VpcCidrBlockStateCode, VpcEndpoint, VpcEndpointType,
    VpcPeeringConnection, VpcPeeringConnectionStateReasonCode,
};
use cloudtik_core::config::WorkspaceConfig;
use cloudtik_core::node::tags;
use cloudtik_core::{
    DeleteWorkspaceOptions, Error, ErrorKind, Result, WorkspaceExistence, WorkspaceProvider,
};
use serde_json::json;

use self::cidr::{free_blocks, overlaps, parse_cidr, peering_cidr};
use self::find::Found;
use self::iam::{IamFound, RoleKind};
use self::network::{RouteTarget, associated, attached_to, default_target, vpc_id_cidr};
use self::peering::{WorkingVpc, accepter_vpc_id, peering_live, peering_state, requester_vpc_id, routes_via};
use super::call::{Call, Calls, SdkFuture, filter, tag_value};
use super::errors::ec2_code;
use super::{AwsSettings, PROVIDER_TYPE, ec2_client, iam_client, s3_client};
pub use options::{AwsWorkspaceOptions, VpcPeering, WorkspaceVpc};

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
/// States of instances that keep a workspace in use.
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

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
/// the next run finds by tag whatever the lost call did create. EC2 calls wait for the
/// client-side rate limit of [`AwsSettings::rate_limits`] (a limiter per provider, as
/// for [`AwsNodeProvider`](super::AwsNodeProvider)); IAM and S3 calls are not metered.
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
    /// Every AWS call goes through here (rate limit, retries, errors naming the
    /// workspace).
    calls: Calls,
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
        let calls = Calls::new(client.clone(), settings.retry, settings.rate_limits)
            .with_scope("workspace", workspace);
        Ok(AwsWorkspaceProvider {
            workspace: workspace.to_string(),
            settings,
            options,
            client,
            iam,
            s3,
            calls,
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

    /// The workspace's tag, as [`Calls::tagged`] takes it.
    fn ours(&self) -> (&str, &str) {
        (WORKSPACE_TAG, &self.workspace)
    }

    fn is_ours(&self, tags: &[Tag]) -> bool {
        tag_value(tags, WORKSPACE_TAG) == Some(self.workspace.as_str())
    }

    /// Runs an EC2 call that reads or changes in place, retrying rate limits and
    /// transient failures.
    async fn call<T, F, Fut>(&self, op: &'static str, call: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        self.calls.run(Call::ec2(op, call), f).await
    }

    /// Runs an EC2 call that creates something, retrying only rate limits (see the type
    /// docs).
    async fn create_call<T, F, Fut>(&self, op: &'static str, call: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        self.calls.run(Call::ec2(op, call).creating(), f).await
    }

    /// Runs a deletion: a resource that is gone already is success, and
    /// `DependencyViolation` (a dependency still going away) is retried until
    /// [`AwsWorkspaceOptions::dependency_timeout`].
    async fn delete_call<T, F, Fut>(&self, op: &'static str, call: &'static str, mut f: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: SdkFuture<T>,
    {
        let deadline = Instant::now() + self.options.dependency_timeout;
        loop {
            match self.calls.delete(Call::ec2(op, call), &mut f).await {
                Ok(()) => return Ok(()),
                Err(e) if ec2_code(&e) == Some("DependencyViolation") && Instant::now() < deadline => {
                    tracing::debug!(error = %cloudtik_core::Report(&e), "a dependency is still there; retrying the deletion");
                    tokio::time::sleep(self.options.poll_interval).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The item of `items` whose `Name` tag is `name`.
fn named<'a, T>(items: &'a [T], tags: impl Fn(&T) -> &[Tag], name: &str) -> Option<&'a T> {
    items.iter().find(|i| tag_value(tags(i), NAME_TAG) == Some(name))
}

fn unexpected(op: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::Unexpected, message).with_operation(op)
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
        self.create("create_workspace").await
    }

    async fn delete_workspace(&self, options: DeleteWorkspaceOptions) -> Result<()> {
        self.delete("delete_workspace", options).await
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
