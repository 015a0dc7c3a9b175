//! The workspace's security group and its ingress rules.

use super::*;

impl AwsWorkspaceProvider {
    /// Step 9: the security group; returns it (as found or created).
    pub(super) async fn ensure_security_group(
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
    pub(super) fn wanted_rules(
        &self,
        group_id: &str,
        vpc_cidr: &str,
        working_cidr: Option<&str>,
    ) -> BTreeSet<Rule> {
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
    pub(super) async fn apply_rules(
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
    pub(super) async fn describe_group(&self, op: &'static str, id: &str) -> Result<SecurityGroup> {
        let described = self
            .call(op, "DescribeSecurityGroups", || {
                self.client.describe_security_groups().group_ids(id).send()
            })
            .await?;
        described.security_groups().first().cloned().ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("security group {id} is gone")).with_operation(op)
        })
    }
}

/// Where one ingress rule lets traffic come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Cidr(String),
    Cidr6(String),
    Group(String),
    PrefixList(String),
}

/// One ingress rule: a protocol, a port range and one source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rule {
    pub(super) protocol: String,
    pub(super) ports: Option<(i32, i32)>,
    pub(super) source: Source,
}

impl Rule {
    pub(super) fn permission(&self) -> IpPermission {
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
pub(super) fn rules_of(p: &IpPermission) -> Vec<Rule> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
