//! Workspace delete: refused while instances use it, then the pieces in reverse order.

use super::*;

impl AwsWorkspaceProvider {
    /// Deletes the workspace in reverse order, refused while instances use it (see
    /// [`AwsWorkspaceProvider`]).
    pub(super) async fn delete(&self, op: &'static str, options: DeleteWorkspaceOptions) -> Result<()> {
        let found = self.find(op).await?;
        let instances = self.instances(op, &found).await?;
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
            .with_operation(op));
        }

        if found.bucket && options.delete_managed_storage {
            self.delete_bucket(op).await?;
        }
        for (kind, iam) in [(RoleKind::Worker, &found.worker), (RoleKind::Head, &found.head)] {
            self.delete_role(op, kind, iam).await?;
        }
        self.delete_peering(op, &found).await?;

        let sg_name = self.security_group_name();
        for group in &found.security_groups {
            let Some(id) = group.group_id() else { continue };
            self.delete_call(op, "DeleteSecurityGroup", || {
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
            self.delete_call(op, "DeleteVpcEndpoints", || {
                self.client
                    .delete_vpc_endpoints()
                    .set_vpc_endpoint_ids(Some(endpoint_ids.clone()))
                    .send()
            })
            .await
            .map_err(at(Piece::S3Endpoint, &name))?;
        }

        self.delete_route_tables(op, &found, Piece::PrivateRouteTable)
            .await?;

        let nat_name = self.name("nat-gateway");
        for nat in &found.nat_gateways {
            let Some(id) = nat.nat_gateway_id() else { continue };
            let err = |e: Error| at(Piece::NatGateway, &nat_name)(e).with_context("nat_gateway", id);
            self.delete_call(op, "DeleteNatGateway", || {
                self.client.delete_nat_gateway().nat_gateway_id(id).send()
            })
            .await
            .map_err(err)?;
            self.wait_nat(op, id, false).await.map_err(err)?;
        }

        let eip_name = self.name("elastic-ip");
        for address in &found.addresses {
            let Some(id) = address.allocation_id() else {
                continue;
            };
            self.delete_call(op, "ReleaseAddress", || {
                self.client.release_address().allocation_id(id).send()
            })
            .await
            .map_err(|e| at(Piece::ElasticIp, &eip_name)(e).with_context("allocation", id))?;
        }

        self.delete_route_tables(op, &found, Piece::PublicRouteTable)
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
                    .delete_call(op, "DetachInternetGateway", || {
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
            self.delete_call(op, "DeleteInternetGateway", || {
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
            self.delete_call(op, "DeleteSubnet", || {
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
                self.delete_call(op, "DeleteVpc", || self.client.delete_vpc().vpc_id(id).send())
                    .await
                    .map_err(err)?;
            } else {
                self.delete_call(op, "DeleteTags", || {
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

    /// Instances that keep the workspace in use: in the created VPC (a working VPC: in
    /// the workspace's subnets), or tagged with the workspace.
    pub(super) async fn instances(&self, op: &'static str, found: &Found) -> Result<Vec<Instance>> {
        let states = filter("instance-state-name", LIVE_STATES);
        let ours = filter(format!("tag:{WORKSPACE_TAG}"), [self.workspace.as_str()]);
        let mut queries = vec![vec![ours, states.clone()]];
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
            for instance in self.calls.list::<Instance>(op, filters).await? {
                if let Some(id) = instance.instance_id() {
                    all.insert(id.to_string(), instance);
                }
            }
        }
        Ok(all.into_values().collect())
    }

    pub(super) async fn delete_route_tables(
        &self,
        op: &'static str,
        found: &Found,
        piece: Piece,
    ) -> Result<()> {
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
