//! Finding what of a workspace exists: its pieces by tag, and what is missing.

use super::*;

/// What of a workspace exists, as found by its tags.
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) vpc: Option<Vpc>,
    pub(super) subnets: Vec<Subnet>,
    /// Internet gateways tagged with the workspace, and (for a working VPC) the one
    /// attached to the VPC.
    pub(super) gateways: Vec<InternetGateway>,
    pub(super) route_tables: Vec<RouteTable>,
    pub(super) addresses: Vec<Address>,
    /// NAT gateways that are pending or available.
    pub(super) nat_gateways: Vec<NatGateway>,
    /// Endpoints that are not being deleted.
    pub(super) endpoints: Vec<VpcEndpoint>,
    pub(super) security_groups: Vec<SecurityGroup>,
    /// Peering connections tagged with the workspace, in any state (EC2 lists deleted
    /// ones for a while; their routes may be left behind).
    pub(super) peerings: Vec<VpcPeeringConnection>,
    /// The route tables of the VPC the live peering connection comes from (the working
    /// VPC).
    pub(super) working_tables: Vec<RouteTable>,
    pub(super) head: IamFound,
    pub(super) worker: IamFound,
    /// Whether the managed bucket exists.
    pub(super) bucket: bool,
}

impl AwsWorkspaceProvider {
    /// Looks up everything of the workspace by its tag (and a working VPC's gateway).
    pub(super) async fn find(&self, op: &'static str) -> Result<Found> {
        let calls = &self.calls;
        let mut vpcs: Vec<Vpc> = calls.tagged(op, self.ours(), []).await?;
        vpcs.sort_by(|a, b| a.vpc_id().cmp(&b.vpc_id()));
        if vpcs.len() > 1 {
            tracing::warn!(workspace = %self.workspace, count = vpcs.len(), "several VPCs carry the workspace tag; using the first");
        }
        let mut found = Found {
            vpc: vpcs.into_iter().next(),
            subnets: calls.tagged(op, self.ours(), []).await?,
            gateways: calls.tagged(op, self.ours(), []).await?,
            ..Found::default()
        };
        if let Some(vpc_id) = found.vpc.as_ref().and_then(|v| v.vpc_id())
            && !found.gateways.iter().any(|g| attached_to(g, vpc_id))
        {
            let attached: Vec<InternetGateway> = calls
                .list(op, vec![filter("attachment.vpc-id", [vpc_id])])
                .await?;
            found
                .gateways
                .extend(attached.into_iter().filter(|g| attached_to(g, vpc_id)));
        }
        found.route_tables = calls.tagged(op, self.ours(), []).await?;
        found.addresses = calls.tagged(op, self.ours(), []).await?;
        // EC2 keeps deleted NAT gateways listed for a while.
        found.nat_gateways = calls.tagged(op, self.ours(), []).await?;
        found.nat_gateways.retain(|n| {
            matches!(
                n.state(),
                Some(NatGatewayState::Pending | NatGatewayState::Available)
            )
        });
        found.endpoints = calls.tagged(op, self.ours(), []).await?;
        // EC2 spells endpoint states both `Deleted` and `deleted`.
        found.endpoints.retain(|e| {
            !e.state()
                .is_some_and(|s| matches!(s.as_str().to_ascii_lowercase().as_str(), "deleting" | "deleted"))
        });
        found.security_groups = calls.tagged(op, self.ours(), []).await?;
        found.peerings = calls.tagged(op, self.ours(), []).await?;
        if let Some(working) = self.peering(&found).and_then(requester_vpc_id) {
            let working = working.to_string();
            found.working_tables = calls
                .list(op, vec![filter("vpc-id", [working.as_str()])])
                .await
                .map_err(|e| e.with_context("working_vpc", &working))?;
        }
        found.head = self.find_iam(op, RoleKind::Head).await?;
        found.worker = self.find_iam(op, RoleKind::Worker).await?;
        found.bucket = self.bucket_exists(op).await?;
        Ok(found)
    }

    pub(super) fn subnet<'a>(&self, found: &'a Found, name: &str) -> Option<&'a Subnet> {
        let vpc_id = found.vpc.as_ref().and_then(|v| v.vpc_id());
        found.subnets.iter().find(|s| {
            tag_value(s.tags(), NAME_TAG) == Some(name) && (vpc_id.is_none() || s.vpc_id() == vpc_id)
        })
    }

    pub(super) fn public_subnets<'a>(&self, found: &'a Found) -> Vec<&'a Subnet> {
        (0..self.options.public_subnets)
            .filter_map(|i| self.subnet(found, &self.public_subnet_name(i)))
            .collect()
    }

    pub(super) fn private_subnets<'a>(&self, found: &'a Found) -> Vec<&'a Subnet> {
        (0..self.options.private_subnets)
            .filter_map(|i| self.subnet(found, &self.private_subnet_name(i)))
            .collect()
    }

    /// The gateway of the VPC: attached to it (ours or, for a working VPC, its own), or
    /// ours and not attached yet.
    pub(super) fn gateway<'a>(&self, found: &'a Found) -> Option<&'a InternetGateway> {
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

    pub(super) fn route_table<'a>(&self, found: &'a Found, name: &str) -> Option<&'a RouteTable> {
        named(&found.route_tables, RouteTable::tags, name)
    }

    pub(super) fn address<'a>(&self, found: &'a Found) -> Option<&'a Address> {
        let name = self.name("elastic-ip");
        named(&found.addresses, Address::tags, &name)
    }

    pub(super) fn nat_gateway<'a>(&self, found: &'a Found) -> Option<&'a NatGateway> {
        let name = self.name("nat-gateway");
        named(&found.nat_gateways, NatGateway::tags, &name)
    }

    pub(super) fn endpoint<'a>(&self, found: &'a Found) -> Option<&'a VpcEndpoint> {
        let name = self.name("vpc-endpoint-s3");
        named(&found.endpoints, VpcEndpoint::tags, &name)
    }

    pub(super) fn security_group<'a>(&self, found: &'a Found) -> Option<&'a SecurityGroup> {
        let name = self.security_group_name();
        let vpc_id = found.vpc.as_ref().and_then(|v| v.vpc_id());
        found
            .security_groups
            .iter()
            .find(|g| g.group_name() == Some(name.as_str()) && (vpc_id.is_none() || g.vpc_id() == vpc_id))
    }

    pub(super) fn peering_name(&self) -> String {
        self.name("vpc-peering-connection")
    }

    /// The workspace's live peering connection (not deleted, rejected, failed or
    /// expired) to its VPC.
    pub(super) fn peering<'a>(&self, found: &'a Found) -> Option<&'a VpcPeeringConnection> {
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
    pub(super) fn peering_complete(&self, found: &Found, wanted: &VpcPeering) -> bool {
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
    pub(super) fn missing(&self, found: &Found) -> (Vec<Piece>, bool) {
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
}
