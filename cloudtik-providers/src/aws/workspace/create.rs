//! Workspace create: the steps in order.

use super::*;

impl AwsWorkspaceProvider {
    /// Creates what is missing, step by step (see [`AwsWorkspaceProvider`]).
    pub(super) async fn create(&self, op: &'static str) -> Result<()> {
        let mut found = self.find(op).await?;
        let working = match &self.options.peering {
            Some(wanted) => Some(
                self.working_vpc(op, &found, wanted)
                    .await
                    .map_err(at(Piece::VpcPeering, &self.peering_name()))?,
            ),
            None => None,
        };
        let (vpc_id, vpc_cidr) = self.ensure_vpc(op, &found, working.as_ref()).await?;
        if found.vpc.is_none() {
            // Look again with the VPC known: a working VPC's own internet gateway.
            found = self.find(op).await?;
        }
        let (public, private) = self.ensure_subnets(op, &found, &vpc_id, &vpc_cidr).await?;
        let gateway = self.ensure_gateway(op, &found, &vpc_id).await?;
        let public_table = self
            .ensure_route_table(
                op,
                &found,
                Piece::PublicRouteTable,
                &vpc_id,
                &public,
                RouteTarget::Gateway(&gateway),
            )
            .await?;
        let allocation = self.ensure_address(op, &found).await?;
        let nat = self.ensure_nat(op, &found, &public[0], &allocation).await?;
        let private_table = self
            .ensure_route_table(
                op,
                &found,
                Piece::PrivateRouteTable,
                &vpc_id,
                &private,
                RouteTarget::Nat(&nat),
            )
            .await?;
        let tables = [public_table, private_table];
        self.ensure_endpoint(op, &found, &vpc_id, &tables).await?;
        let group = self.ensure_security_group(op, &found, &vpc_id).await?;
        let allow_working = self
            .options
            .peering
            .as_ref()
            .is_some_and(|p| p.allow_working_subnet);
        let working_cidr = working
            .as_ref()
            .filter(|_| allow_working)
            .map(|w| w.cidr.as_str());
        self.apply_rules(op, &group, &vpc_cidr, working_cidr).await?;
        if let Some(working) = &working {
            self.ensure_peering(op, &found, &vpc_id, &vpc_cidr, working, &tables)
                .await?;
        }
        let mut profiles_changed = false;
        for (kind, iam) in [(RoleKind::Head, &found.head), (RoleKind::Worker, &found.worker)] {
            profiles_changed |= self.ensure_role(op, kind, iam).await?;
        }
        if self.options.managed_cloud_storage {
            self.ensure_bucket(op, found.bucket).await?;
        }
        if profiles_changed && !self.options.iam_propagation_wait.is_zero() {
            tracing::info!(wait = ?self.options.iam_propagation_wait, "waiting for IAM to propagate the instance profiles");
            tokio::time::sleep(self.options.iam_propagation_wait).await;
        }
        tracing::info!(workspace = %self.workspace, vpc = %vpc_id, "workspace complete");
        Ok(())
    }
}
