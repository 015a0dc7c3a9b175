//! Launching instances: reuse of stopped ones, spot and on-demand markets, subnets,
//! `RunInstances` and its client tokens.

use std::time::Duration;

use super::*;

/// How a launch asks EC2 for instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Market {
    /// On-demand instances.
    OnDemand,
    /// Spot because of `prefer_spot`: a spot capacity or price error launches the rest
    /// on-demand.
    SpotOrOnDemand,
    /// Spot because the node type's `node_config.InstanceMarketOptions` says so: no
    /// fallback.
    SpotOnly,
}

/// The market a launch starts in: the node type's own spot request wins; otherwise
/// `prefer_spot` asks for spot unless a spot shortage of the instance type was seen
/// less than `backoff` before `now`.
pub(super) fn initial_market(
    explicit_spot: bool,
    prefer_spot: bool,
    last_shortage: Option<Instant>,
    now: Instant,
    backoff: Duration,
) -> Market {
    if explicit_spot {
        Market::SpotOnly
    } else if prefer_spot && last_shortage.is_none_or(|at| now.saturating_duration_since(at) >= backoff) {
        Market::SpotOrOnDemand
    } else {
        Market::OnDemand
    }
}

/// The last spot shortage (capacity or price error) per instance type.
#[derive(Debug, Default)]
pub(super) struct SpotShortages(HashMap<String, Instant>);

impl AwsNodeProvider {
    /// With `cache_stopped_nodes`: starts up to `wanted` of the cluster's stopped
    /// instances whose node kind, launch hash and node type equal the request's, after
    /// tagging them with `launch_tags` (the new token among them). Instances already
    /// tagged with the request's token come first: they are the ones a launch that
    /// stopped between `CreateTags` and `StartInstances` had picked. Returns the
    /// started nodes; none when the request lacks one of the three tags.
    pub(super) async fn reuse_stopped(
        &self,
        request: &LaunchRequest,
        launch_tags: &Tags,
        wanted: usize,
    ) -> Result<Vec<NodeInfo>> {
        const OP: &str = "create_nodes";
        let mut ec2_filters = Vec::new();
        for key in REUSE_TAGS {
            let Some(value) = request.tags.get(key) else {
                return Ok(Vec::new());
            };
            ec2_filters.push(filter(format!("tag:{key}"), [value.clone()]));
        }
        let _one_at_a_time = self.inner.reuse.lock().await;
        let mut candidates: Vec<NodeInfo> = self
            .cluster_instances(OP, &["stopped"], ec2_filters)
            .await?
            .iter()
            .filter_map(node_info)
            .filter(|n| {
                n.state == NodeState::Stopped
                    && REUSE_TAGS
                        .iter()
                        .all(|k| n.tag(k) == request.tags.get(*k).map(String::as_str))
            })
            .collect();
        // The token's own first, then by id (a stable choice).
        candidates.sort_by_key(|n| {
            (
                n.tag(tags::LAUNCH_TOKEN) != Some(request.token.as_str()),
                n.id.clone(),
            )
        });
        candidates.truncate(wanted);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let per_node: BTreeMap<String, Tags> = candidates
            .iter()
            .map(|n| (n.id.clone(), launch_tags.clone()))
            .collect();
        self.inner.known().extend(per_node.keys().cloned());
        let writes = self.write_tags(OP, &per_node).await;
        if let Some(e) = writes.failed.values().next() {
            return Err(duplicate(e));
        }
        candidates.retain(|n| !writes.missing.contains(&n.id));
        let ids: Vec<String> = candidates.iter().map(|n| n.id.clone()).collect();
        self.act(OP, Action::Start, &ids)
            .await
            .map_err(|e| e.with_context("nodes", ids.join(",")))?;
        tracing::debug!(nodes = %ids.join(","), "started stopped instances for a launch");
        for node in &mut candidates {
            node.state = NodeState::Pending;
            node.tags.extend(launch_tags.clone());
        }
        Ok(candidates)
    }

    /// The tags a launch sets: the request's, the cluster name, the token, and `Name`.
    pub(super) fn launch_tags(&self, request: &LaunchRequest) -> Tags {
        let mut all = request.tags.clone();
        all.insert(tags::CLUSTER_NAME.to_string(), self.inner.cluster.clone());
        all.insert(tags::LAUNCH_TOKEN.to_string(), request.token.clone());
        if let Some(name) = request.tags.get(tags::NODE_NAME) {
            all.entry(NAME_TAG.to_string()).or_insert_with(|| name.clone());
        }
        all
    }

    /// One `RunInstances` call for up to `count` instances in `subnet`, as spot
    /// instances with `spot`'s options when given.
    pub(super) async fn run_instances(
        &self,
        config: &Ec2NodeConfig,
        subnet: Option<&str>,
        spot: Option<&SpotMarketOptions>,
        count: usize,
        client_token: &str,
        launch_tags: &Tags,
    ) -> Result<Vec<Instance>> {
        const OP: &str = "create_nodes";
        let max_count = i32::try_from(count).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot launch {count} instances in one call"),
            )
            .with_operation(OP)
        })?;
        let tag_list: Vec<Tag> = launch_tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let mut request = self
            .ec2()
            .run_instances()
            .set_image_id(config.image_id.clone())
            .instance_type(InstanceType::from(config.instance_type.as_str()))
            .min_count(1)
            .max_count(max_count)
            .client_token(client_token)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tag_list))
                    .build(),
            )
            .set_subnet_id(subnet.map(str::to_string))
            .set_key_name(config.key_name.clone())
            .set_user_data(config.user_data.clone())
            .set_ebs_optimized(config.ebs_optimized);
        if let Some(options) = spot {
            let mut market = InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot);
            if options != &SpotMarketOptions::default() {
                market = market.spot_options(
                    aws_sdk_ec2::types::SpotMarketOptions::builder()
                        .set_max_price(options.max_price.clone())
                        .set_spot_instance_type(
                            options.spot_instance_type.as_deref().map(SpotInstanceType::from),
                        )
                        .set_instance_interruption_behavior(
                            options
                                .instance_interruption_behavior
                                .as_deref()
                                .map(InstanceInterruptionBehavior::from),
                        )
                        .build(),
                );
            }
            request = request.instance_market_options(market.build());
        }
        for m in &config.block_device_mappings {
            request = request.block_device_mappings(block_device_mapping(m));
        }
        if !config.security_group_ids.is_empty() {
            request = request.set_security_group_ids(Some(config.security_group_ids.clone()));
        }
        if config.iam_instance_profile_arn.is_some() || config.iam_instance_profile_name.is_some() {
            request = request.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .set_arn(config.iam_instance_profile_arn.clone())
                    .set_name(config.iam_instance_profile_name.clone())
                    .build(),
            );
        }
        // Only throttled calls are repeated here (EC2 did not act on them). A call whose
        // answer was lost may have launched instances: create_nodes lists the token's
        // instances again before it asks for more.
        let output = self
            .inner
            .calls
            .run(Call::ec2(OP, "RunInstances").creating(), || {
                request.clone().send()
            })
            .await
            .map_err(|e| {
                e.with_context("cluster", &self.inner.cluster)
                    .with_context("instance_type", &config.instance_type)
                    .with_context("subnet", subnet.unwrap_or("default"))
                    .with_context("market", if spot.is_some() { "spot" } else { "on-demand" })
            })?;
        Ok(output.instances().to_vec())
    }
}

impl AwsNodeProvider {
    /// [`NodeProvider::create_nodes`]: the launch (see the module docs of [`aws`](crate::aws)).
    pub(super) async fn launch(&self, request: &LaunchRequest) -> Result<LaunchOutcome> {
        const OP: &str = "create_nodes";
        let with_request = |e: Error| {
            e.with_operation(OP)
                .with_context("node_type", &request.node_type)
                .with_context("token", &request.token)
        };
        if request.count == 0 {
            return Ok(LaunchOutcome::new(Vec::new(), None));
        }
        if request.token.is_empty()
            || request.token.len() > MAX_TOKEN_LEN
            || !request
                .token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(with_request(Error::new(
                ErrorKind::InvalidConfig,
                format!("a launch token must be 1 to {MAX_TOKEN_LEN} ASCII letters, digits or dashes"),
            )));
        }
        let mut config = Ec2NodeConfig::from_value(&request.node_config).map_err(with_request)?;
        let launch_tags = self.launch_tags(request);

        let mut token_filter = Tags::new();
        token_filter.insert(tags::LAUNCH_TOKEN.to_string(), request.token.clone());
        let mut nodes = self.list_nodes(&token_filter).await.map_err(with_request)?;
        if nodes.len() >= request.count {
            return Ok(LaunchOutcome::new(nodes, None));
        }
        if self.inner.settings.cache_stopped_nodes {
            // A failed reuse is not the launch's failure: new instances are launched
            // instead (a re-run with the token finds what the reuse did start).
            match self
                .reuse_stopped(request, &launch_tags, request.count - nodes.len())
                .await
            {
                Ok(started) => {
                    for node in started {
                        if !nodes.iter().any(|n| n.id == node.id) {
                            nodes.push(node);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %cloudtik_core::Report(&e), "reusing stopped instances failed; launching new ones");
                }
            }
            if nodes.len() >= request.count {
                return Ok(LaunchOutcome::new(nodes, None));
            }
        }
        if config.image_id.is_none() {
            config.image_id = Some(self.default_image_id().await.map_err(with_request)?);
        }
        let subnets: Vec<Option<&str>> = if config.subnet_ids.is_empty() {
            vec![None]
        } else {
            config.subnet_ids.iter().map(|s| Some(s.as_str())).collect()
        };
        // EC2 may create fewer than MaxCount instances without an error; the rest is
        // asked for again until an error stops it (each call creates at least one
        // instance or fails, so this ends). A capacity error moves on to the next subnet.
        let mut subnet_index = 0;
        let last_shortage = self.spot_shortage(&config.instance_type);
        let mut market = initial_market(
            config.spot.is_some(),
            self.inner.settings.prefer_spot,
            last_shortage,
            Instant::now(),
            self.inner.settings.spot_backoff,
        );
        if market == Market::OnDemand && self.inner.settings.prefer_spot && config.spot.is_none() {
            tracing::debug!(
                instance_type = %config.instance_type,
                "a recent spot shortage of the instance type: launching on-demand"
            );
        }
        let default_spot = SpotMarketOptions::default();
        let mut failure = None;
        let mut lost_answers = 0;
        while nodes.len() < request.count {
            let have = nodes.len();
            let spot = match market {
                Market::OnDemand => None,
                Market::SpotOrOnDemand => Some(config.spot.as_ref().unwrap_or(&default_spot)),
                Market::SpotOnly => config.spot.as_ref(),
            };
            let suffix = if spot.is_some() { "s" } else { "" };
            let client_token = format!("{}-{have}-{subnet_index}{suffix}", request.token);
            match self
                .run_instances(
                    &config,
                    subnets[subnet_index],
                    spot,
                    request.count - have,
                    &client_token,
                    &launch_tags,
                )
                .await
            {
                Ok(instances) => {
                    failure = None;
                    for instance in &instances {
                        if let Some(mut node) = node_info(instance) {
                            // RunInstances need not answer the tags; they are the ones sent.
                            node.tags = launch_tags.clone();
                            if !nodes.iter().any(|n| n.id == node.id) {
                                nodes.push(node);
                            }
                        }
                    }
                    if nodes.len() == have {
                        failure = Some(with_request(
                            Error::new(
                                ErrorKind::Capacity,
                                format!(
                                    "EC2 RunInstances created no new instance of the {} missing",
                                    request.count - have
                                ),
                            )
                            .with_context("call", "RunInstances")
                            .with_context("instance_type", &config.instance_type),
                        ));
                        break;
                    }
                }
                Err(e) if market == Market::SpotOrOnDemand && is_spot_shortage(&e) => {
                    tracing::debug!(error = %cloudtik_core::Report(&e), "no spot capacity; launching the rest on-demand");
                    self.record_spot_shortage(&config.instance_type, Instant::now());
                    market = Market::OnDemand;
                }
                // The call failed in transit (its answer may be lost after EC2 launched
                // instances): wait, list the token's instances again, and go on with the
                // ones still missing. EC2 answers a repeated ClientToken with the first
                // call's instances; the listing covers servers that ignore ClientToken.
                Err(e)
                    if e.kind() == ErrorKind::Transient
                        && lost_answers < self.inner.settings.retry.max_retries =>
                {
                    lost_answers += 1;
                    tracing::debug!(error = %cloudtik_core::Report(&e), "RunInstances failed in transit; listing the launch token again");
                    tokio::time::sleep(self.inner.settings.retry.delay(lost_answers, 0.0)).await;
                    for node in self.list_nodes(&token_filter).await.map_err(with_request)? {
                        if !nodes.iter().any(|n| n.id == node.id) {
                            nodes.push(node);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Capacity && subnet_index + 1 < subnets.len() => {
                    tracing::debug!(error = %cloudtik_core::Report(&e), "no capacity in a subnet; trying the next one");
                    subnet_index += 1;
                }
                Err(e) => {
                    failure = Some(with_request(e));
                    break;
                }
            }
        }
        self.inner.known().extend(nodes.iter().map(|n| n.id.clone()));
        if nodes.is_empty() {
            return Err(failure.unwrap_or_else(|| {
                with_request(Error::new(
                    ErrorKind::Unexpected,
                    "EC2 RunInstances answered no instances and no error",
                ))
            }));
        }
        let shortfall = if nodes.len() >= request.count {
            None
        } else {
            failure
        };
        Ok(LaunchOutcome::new(nodes, shortfall))
    }
}

impl AwsNodeProvider {
    /// When a spot launch of `instance_type` last lacked capacity or price.
    pub(super) fn spot_shortage(&self, instance_type: &str) -> Option<Instant> {
        self.inner
            .spot_shortages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(instance_type)
            .copied()
    }

    /// Remembers a spot shortage of `instance_type` at `at`.
    pub(super) fn record_spot_shortage(&self, instance_type: &str, at: Instant) {
        self.inner
            .spot_shortages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .insert(instance_type.to_string(), at);
    }
}

/// Whether `e` is a spot launch's lack of capacity or price, after which the provider
/// launches on-demand.
pub(super) fn is_spot_shortage(e: &Error) -> bool {
    e.kind() == ErrorKind::Capacity
        || ec2_code(e).is_some_and(|c| {
            matches!(
                c,
                "InsufficientInstanceCapacity" | "SpotMaxPriceTooLow" | "MaxSpotInstanceCountExceeded"
            )
        })
}

/// A `node_config.BlockDeviceMappings` item as the SDK's type.
pub(super) fn block_device_mapping(m: &BlockDeviceMapping) -> aws_sdk_ec2::types::BlockDeviceMapping {
    let ebs = m.ebs.as_ref().map(|e| {
        aws_sdk_ec2::types::EbsBlockDevice::builder()
            .set_volume_size(e.volume_size)
            .set_volume_type(e.volume_type.as_deref().map(aws_sdk_ec2::types::VolumeType::from))
            .set_delete_on_termination(e.delete_on_termination)
            .set_iops(e.iops)
            .set_throughput(e.throughput)
            .set_encrypted(e.encrypted)
            .set_kms_key_id(e.kms_key_id.clone())
            .set_snapshot_id(e.snapshot_id.clone())
            .build()
    });
    aws_sdk_ec2::types::BlockDeviceMapping::builder()
        .device_name(&m.device_name)
        .set_virtual_name(m.virtual_name.clone())
        .set_no_device(m.no_device.clone())
        .set_ebs(ebs)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spot_shortage_sends_prefer_spot_launches_on_demand_for_the_backoff() {
        let backoff = Duration::from_secs(300);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // No shortage seen: prefer_spot asks for spot, with fallback.
        assert_eq!(
            initial_market(false, true, None, at(0), backoff),
            Market::SpotOrOnDemand
        );
        // A shortage 10 s or 299 s ago: on-demand directly.
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(10), backoff),
            Market::OnDemand
        );
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(299), backoff),
            Market::OnDemand
        );
        // After the backoff: spot again.
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(300), backoff),
            Market::SpotOrOnDemand
        );
        // A zero backoff never skips spot.
        assert_eq!(
            initial_market(false, true, Some(at(0)), at(0), Duration::ZERO),
            Market::SpotOrOnDemand
        );
        // The node type's own spot request ignores shortages and never falls back.
        assert_eq!(
            initial_market(true, false, Some(at(0)), at(1), backoff),
            Market::SpotOnly
        );
        assert_eq!(
            initial_market(true, true, Some(at(0)), at(1), backoff),
            Market::SpotOnly
        );
        // Neither: on-demand.
        assert_eq!(
            initial_market(false, false, None, at(0), backoff),
            Market::OnDemand
        );
    }

    #[test]
    fn spot_shortages_are_remembered_per_instance_type() {
        let p = AwsNodeProvider::from_ec2_config(
            "shortages",
            aws_sdk_ec2::config::Builder::new()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest()),
            AwsSettings::new("us-east-1"),
        )
        .unwrap();
        let t0 = Instant::now();
        assert_eq!(p.spot_shortage("m5.large"), None);
        p.record_spot_shortage("m5.large", t0);
        assert_eq!(p.spot_shortage("m5.large"), Some(t0));
        assert_eq!(p.spot_shortage("c5.large"), None);
    }
}
