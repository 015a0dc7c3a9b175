//! The create steps of the workspace's network: VPC, subnets, gateways, route tables,
//! elastic IP, NAT gateway and S3 endpoint.

use super::*;

impl AwsWorkspaceProvider {
    /// Step 1: the VPC; returns its id and IPv4 range. A VPC to be peered with
    /// `working` gets a range that overlaps none the working VPC uses.
    pub(super) async fn ensure_vpc(
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

    /// The zones for subnets: the configured ones or the region's available zones.
    pub(super) async fn zones(&self, op: &'static str) -> Result<Vec<String>> {
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
    pub(super) async fn ensure_subnets(
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
            let in_vpc: Vec<Subnet> = self
                .calls
                .list(op, vec![filter("vpc-id", [vpc_id])])
                .await
                .map_err(at(*first_piece, first_name))?;
            let used: Vec<&str> = in_vpc.iter().filter_map(|s| s.cidr_block()).collect();
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
    pub(super) async fn ensure_gateway(
        &self,
        op: &'static str,
        found: &Found,
        vpc_id: &str,
    ) -> Result<String> {
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
    pub(super) async fn ensure_route_table(
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
            let (gateway, nat) = match target {
                RouteTarget::Gateway(id) => (Some(id.to_string()), None),
                RouteTarget::Nat(id) => (None, Some(id.to_string())),
            };
            // `ReplaceRoute` and `CreateRoute` take the same fields.
            macro_rules! default_route {
                ($method:ident) => {
                    self.client
                        .$method()
                        .route_table_id(&table_id)
                        .destination_cidr_block(ANYWHERE)
                        .set_gateway_id(gateway.clone())
                        .set_nat_gateway_id(nat.clone())
                        .send()
                };
            }
            let routed = if exists {
                self.call(op, "ReplaceRoute", || default_route!(replace_route))
                    .await
                    .map(drop)
            } else {
                self.call(op, "CreateRoute", || default_route!(create_route))
                    .await
                    .map(drop)
            };
            routed.map_err(|e| err(e).with_context("route_table", &table_id))?;
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

    pub(super) async fn reassociate(&self, op: &'static str, table_id: &str, subnet: &str) -> Result<()> {
        let tables: Vec<RouteTable> = self
            .calls
            .list(op, vec![filter("association.subnet-id", [subnet])])
            .await?;
        let association = tables
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
    pub(super) async fn ensure_address(&self, op: &'static str, found: &Found) -> Result<String> {
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
    pub(super) async fn ensure_nat(
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
    pub(super) async fn wait_nat(&self, op: &'static str, id: &str, available: bool) -> Result<()> {
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
    pub(super) async fn ensure_endpoint(
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
}

/// Where a default route goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum RouteTarget<'a> {
    Gateway(&'a str),
    Nat(&'a str),
}

impl RouteTarget<'_> {
    pub(super) fn id(&self) -> &str {
        match self {
            RouteTarget::Gateway(id) | RouteTarget::Nat(id) => id,
        }
    }
}

pub(super) fn vpc_id_cidr(vpc: &Vpc) -> Result<(String, String)> {
    match (vpc.vpc_id(), vpc.cidr_block()) {
        (Some(id), Some(cidr)) => Ok((id.to_string(), cidr.to_string())),
        _ => Err(Error::new(
            ErrorKind::Unexpected,
            "a VPC without id or IPv4 range",
        )),
    }
}

pub(super) fn attached_to(gateway: &InternetGateway, vpc_id: &str) -> bool {
    gateway.attachments().iter().any(|a| {
        a.vpc_id() == Some(vpc_id)
            && a.state()
                .is_none_or(|s| matches!(s.as_str(), "available" | "attached" | "attaching"))
    })
}

/// The gateway or NAT gateway the default route of a table goes to.
pub(super) fn default_target(table: &RouteTable) -> Option<&str> {
    table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(ANYWHERE))
        .and_then(|r| r.gateway_id().or(r.nat_gateway_id()))
}

pub(super) fn associated(table: &RouteTable, subnet: &str) -> bool {
    table.associations().iter().any(|a| a.subnet_id() == Some(subnet))
}
