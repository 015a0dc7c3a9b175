//! The workspace's IAM roles and instance profiles.

use super::*;

/// Who may assume the workspace's roles.
pub(super) const EC2_TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
/// The managed policies of the head role (as CloudTik's).
pub(super) const HEAD_POLICIES: [&str; 4] = [
    "arn:aws:iam::aws:policy/AmazonEC2FullAccess",
    "arn:aws:iam::aws:policy/AmazonS3FullAccess",
    "arn:aws:iam::aws:policy/IAMFullAccess",
    "arn:aws:iam::aws:policy/ElasticLoadBalancingFullAccess",
];
/// The managed policies of the worker role.
pub(super) const WORKER_POLICIES: [&str; 3] = [
    "arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess",
    "arn:aws:iam::aws:policy/AmazonS3FullAccess",
    "arn:aws:iam::aws:policy/ElasticLoadBalancingFullAccess",
];

/// A role of the workspace and its instance profile, as found in IAM.
#[derive(Debug, Default)]
pub(super) struct IamFound {
    pub(super) role_arn: Option<String>,
    /// The managed policies attached to the role.
    pub(super) policies: BTreeSet<String>,
    pub(super) profile_arn: Option<String>,
    /// The roles in the instance profile.
    pub(super) profile_roles: Vec<String>,
}

impl IamFound {
    pub(super) fn exists(&self) -> bool {
        self.role_arn.is_some() || self.profile_arn.is_some()
    }
}

/// Which of the two roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoleKind {
    Head,
    Worker,
}

impl RoleKind {
    pub(super) fn piece(self) -> Piece {
        match self {
            RoleKind::Head => Piece::HeadRole,
            RoleKind::Worker => Piece::WorkerRole,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            RoleKind::Head => "head",
            RoleKind::Worker => "worker",
        }
    }

    pub(super) fn policies(self) -> &'static [&'static str] {
        match self {
            RoleKind::Head => &HEAD_POLICIES,
            RoleKind::Worker => &WORKER_POLICIES,
        }
    }
}

impl AwsWorkspaceProvider {
    pub(super) fn role_name(&self, kind: RoleKind) -> String {
        self.name(&format!("{}-role", kind.as_str()))
    }

    pub(super) fn profile_name(&self, kind: RoleKind) -> String {
        self.name(&format!("{}-profile", kind.as_str()))
    }

    /// A role and its instance profile as IAM has them.
    pub(super) async fn find_iam(&self, op: &'static str, kind: RoleKind) -> Result<IamFound> {
        let role = self.role_name(kind);
        let profile = self.profile_name(kind);
        let mut found = IamFound::default();
        match self
            .calls
            .run(Call::iam(op, "GetRole"), || {
                self.iam.get_role().role_name(&role).send()
            })
            .await
        {
            Ok(out) => found.role_arn = out.role().map(|r| r.arn().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(at(kind.piece(), &role)(e)),
        }
        if found.role_arn.is_some() {
            let pages = self
                .calls
                .pages(
                    Call::iam(op, "ListAttachedRolePolicies"),
                    |marker| {
                        self.iam
                            .list_attached_role_policies()
                            .role_name(&role)
                            .set_marker(marker)
                            .send()
                    },
                    |page| page.marker().filter(|_| page.is_truncated()),
                )
                .await
                .map_err(at(kind.piece(), &role))?;
            found.policies.extend(
                pages
                    .iter()
                    .flat_map(|page| page.attached_policies())
                    .filter_map(|p| p.policy_arn())
                    .map(str::to_string),
            );
        }
        match self
            .calls
            .run(Call::iam(op, "GetInstanceProfile"), || {
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

    pub(super) fn iam_complete(&self, kind: RoleKind, found: &IamFound) -> bool {
        let role = self.role_name(kind);
        found.role_arn.is_some()
            && kind.policies().iter().all(|p| found.policies.contains(*p))
            && found.profile_arn.is_some()
            && found.profile_roles.contains(&role)
    }

    pub(super) fn iam_tags(&self) -> Vec<aws_sdk_iam::types::Tag> {
        aws_sdk_iam::types::Tag::builder()
            .key(WORKSPACE_TAG)
            .value(&self.workspace)
            .build()
            .into_iter()
            .collect()
    }

    /// Step 10: a role with its policies, in its instance profile. Returns whether an
    /// instance profile was created or given its role (so create waits for IAM).
    pub(super) async fn ensure_role(
        &self,
        op: &'static str,
        kind: RoleKind,
        found: &IamFound,
    ) -> Result<bool> {
        let role = self.role_name(kind);
        let profile = self.profile_name(kind);
        let err = at(kind.piece(), &role);
        if found.role_arn.is_none() {
            let created = self
                .calls
                .run(Call::iam(op, "CreateRole").creating(), || {
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
                self.calls
                    .run(Call::iam(op, "AttachRolePolicy"), || {
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
                .calls
                .run(Call::iam(op, "CreateInstanceProfile").creating(), || {
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
            self.calls
                .run(Call::iam(op, "AddRoleToInstanceProfile"), || {
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
    pub(super) async fn delete_role(&self, op: &'static str, kind: RoleKind, found: &IamFound) -> Result<()> {
        let role = self.role_name(kind);
        let profile = self.profile_name(kind);
        if found.profile_arn.is_some() {
            for member in &found.profile_roles {
                self.calls
                    .delete(Call::iam(op, "RemoveRoleFromInstanceProfile"), || {
                        self.iam
                            .remove_role_from_instance_profile()
                            .instance_profile_name(&profile)
                            .role_name(member)
                            .send()
                    })
                    .await
                    .map_err(|e| at(kind.piece(), &profile)(e).with_context("role", member))?;
            }
            self.calls
                .delete(Call::iam(op, "DeleteInstanceProfile"), || {
                    self.iam
                        .delete_instance_profile()
                        .instance_profile_name(&profile)
                        .send()
                })
                .await
                .map_err(at(kind.piece(), &profile))?;
        }
        if found.role_arn.is_some() {
            for policy in &found.policies {
                self.calls
                    .delete(Call::iam(op, "DetachRolePolicy"), || {
                        self.iam
                            .detach_role_policy()
                            .role_name(&role)
                            .policy_arn(policy)
                            .send()
                    })
                    .await
                    .map_err(|e| at(kind.piece(), &role)(e).with_context("policy", policy))?;
            }
            let inline = match self
                .calls
                .run(Call::iam(op, "ListRolePolicies"), || {
                    self.iam.list_role_policies().role_name(&role).send()
                })
                .await
            {
                Ok(out) => out.policy_names().to_vec(),
                Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(at(kind.piece(), &role)(e)),
            };
            for policy in &inline {
                self.calls
                    .delete(Call::iam(op, "DeleteRolePolicy"), || {
                        self.iam
                            .delete_role_policy()
                            .role_name(&role)
                            .policy_name(policy)
                            .send()
                    })
                    .await
                    .map_err(|e| at(kind.piece(), &role)(e).with_context("policy", policy))?;
            }
            self.calls
                .delete(Call::iam(op, "DeleteRole"), || {
                    self.iam.delete_role().role_name(&role).send()
                })
                .await
                .map_err(at(kind.piece(), &role))?;
        }
        Ok(())
    }
}
