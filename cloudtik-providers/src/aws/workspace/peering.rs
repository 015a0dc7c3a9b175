//! VPC peering with the working VPC: finding the working VPC, the connection, its routes,
//! and their deletion.

use super::*;

/// The working VPC of a peering, as described by create and update.
#[derive(Debug)]
pub(super) struct WorkingVpc {
    pub(super) id: String,
    /// Its primary IPv4 range.
    pub(super) cidr: String,
    /// Every IPv4 range associated with it, the primary one first.
    pub(super) cidrs: Vec<String>,
    /// Its route tables.
    pub(super) tables: Vec<RouteTable>,
}

impl WorkingVpc {
    /// The ranges a peered VPC must not overlap: the working VPC's own and the
    /// destinations its route tables send elsewhere (but the default route).
    pub(super) fn used(&self) -> Vec<&str> {
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

impl AwsWorkspaceProvider {
    /// The VPC of the EC2 instance this process runs on, found by its private address.
    pub(super) async fn working_vpc_id(&self, op: &'static str) -> Result<String> {
        let ip = local_ipv4().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "the working VPC (use_working_vpc, or peering for use_internal_ips) cannot be found: this \
                 machine's address is unknown; give provider.working_vpc_id",
            )
            .with_operation(op)
        })?;
        let instances: Vec<Instance> = self
            .calls
            .list(op, vec![filter("private-ip-address", [ip.to_string()])])
            .await?;
        instances
            .iter()
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
    pub(super) async fn working_vpc(
        &self,
        op: &'static str,
        found: &Found,
        wanted: &VpcPeering,
    ) -> Result<WorkingVpc> {
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
            .calls
            .list(op, vec![filter("vpc-id", [id.as_str()])])
            .await
            .map_err(|e| e.with_context("working_vpc", &id))?;
        Ok(WorkingVpc {
            id,
            cidr,
            cidrs,
            tables,
        })
    }

    /// The working VPC's range the security group lets in, when peering wants it: the
    /// range the live peering connection comes from, else the working VPC's.
    pub(super) async fn working_rule_cidr(&self, op: &'static str, found: &Found) -> Result<Option<String>> {
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
    pub(super) async fn ensure_peering(
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
    pub(super) async fn ensure_peering_route(
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

    /// Removes the routes through the workspace's peering connections (in both VPCs,
    /// also those of connections that are deleted already) and deletes the live
    /// connections.
    pub(super) async fn delete_peering(&self, op: &'static str, found: &Found) -> Result<()> {
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
        let tables: Vec<RouteTable> = self
            .calls
            .list(op, vec![filter("route.vpc-peering-connection-id", ids.clone())])
            .await
            .map_err(&err)?;
        for table in &tables {
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
}

pub(super) fn peering_state(p: &VpcPeeringConnection) -> Option<&VpcPeeringConnectionStateReasonCode> {
    p.status().and_then(|s| s.code())
}

/// A peering connection that is (or may become) usable: not deleted, rejected, failed
/// or expired.
pub(super) fn peering_live(p: &VpcPeeringConnection) -> bool {
    use VpcPeeringConnectionStateReasonCode as Code;
    !matches!(
        peering_state(p),
        Some(Code::Deleted | Code::Deleting | Code::Expired | Code::Failed | Code::Rejected)
    )
}

/// The VPC a peering connection comes from (the working VPC).
pub(super) fn requester_vpc_id(p: &VpcPeeringConnection) -> Option<&str> {
    p.requester_vpc_info().and_then(|i| i.vpc_id())
}

/// The VPC a peering connection goes to (the workspace's).
pub(super) fn accepter_vpc_id(p: &VpcPeeringConnection) -> Option<&str> {
    p.accepter_vpc_info().and_then(|i| i.vpc_id())
}

/// Whether `table` sends `destination` through the peering connection `pcx`.
pub(super) fn routes_via(table: &RouteTable, destination: &str, pcx: &str) -> bool {
    table.routes().iter().any(|r| {
        r.destination_cidr_block() == Some(destination) && r.vpc_peering_connection_id() == Some(pcx)
    })
}

/// Where a route goes, for messages.
pub(super) fn route_target(r: &Route) -> &str {
    r.gateway_id()
        .or(r.nat_gateway_id())
        .or(r.vpc_peering_connection_id())
        .or(r.transit_gateway_id())
        .or(r.network_interface_id())
        .or(r.instance_id())
        .unwrap_or("another target")
}

/// This machine's primary IPv4 address (the source of its default route; no packet is
/// sent).
pub(super) fn local_ipv4() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("169.254.169.254:80").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}
