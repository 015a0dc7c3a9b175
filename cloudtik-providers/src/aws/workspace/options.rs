//! What a workspace looks like: [`AwsWorkspaceOptions`], [`WorkspaceVpc`] and [`VpcPeering`].

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
