//! Listing this cluster's instances by id and state, and terminating, stopping and
//! starting them.

use super::*;

impl AwsNodeProvider {
    /// The ids among `ids` that are instances of this cluster in one of `states`.
    pub(super) async fn existing_ids(
        &self,
        operation: &'static str,
        ids: &[String],
        states: &[&str],
    ) -> Result<BTreeSet<String>> {
        Ok(self
            .live_instances(operation, ids, states)
            .await?
            .into_keys()
            .collect())
    }

    /// The instances among `ids` that are this cluster's, in one of `states`, by id.
    pub(super) async fn live_instances(
        &self,
        operation: &'static str,
        ids: &[String],
        states: &[&str],
    ) -> Result<BTreeMap<String, Instance>> {
        let mut found = BTreeMap::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let ids = filter("instance-id", chunk.iter().cloned());
            for instance in self.cluster_instances(operation, states, [ids]).await? {
                if let Some(id) = instance.instance_id() {
                    found.insert(id.to_string(), instance);
                }
            }
        }
        Ok(found)
    }

    /// The cluster's stopped (and stopping) instances: the nodes `cache_stopped_nodes`
    /// keeps for reuse, and any the cluster's owner stopped. One `DescribeInstances`
    /// listing; `list_nodes` never shows them.
    pub async fn stopped_nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(self
            .cluster_instances("stopped_nodes", &STOPPED_STATES, [])
            .await?
            .iter()
            .filter_map(node_info)
            .collect())
    }

    /// Terminates the cluster's stopped instances for good and returns their ids.
    ///
    /// With [`AwsSettings::cache_stopped_nodes`], `terminate_nodes` (the autoscaler
    /// scaling down, `cloudtik stop`) only stops instances; this is what removes them,
    /// e.g. before the workspace is deleted (which is refused while they exist).
    /// `TerminateInstances` in chunks of 1,000; instances gone meanwhile are skipped.
    pub async fn terminate_stopped_nodes(&self) -> Result<Vec<NodeId>> {
        const OP: &str = "terminate_stopped_nodes";
        let ids: Vec<NodeId> = self.stopped_nodes().await?.into_iter().map(|n| n.id).collect();
        self.act_chunked(OP, Action::Terminate, &ids).await?;
        Ok(ids)
    }

    /// Runs `action` on `ids` in chunks of 1,000. A `NotFound` answer (an instance
    /// vanished since it was described) is retried once with the instances that still
    /// live; a second one means they are gone.
    pub(super) async fn act_chunked(&self, op: &'static str, action: Action, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(EC2_BATCH) {
            let mut targets = chunk.to_vec();
            for attempt in 0..2 {
                match self.act(op, action, &targets).await {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        if attempt == 1 {
                            break;
                        }
                        targets = self
                            .existing_ids(op, &targets, &LIVE_STATES)
                            .await?
                            .into_iter()
                            .collect();
                        if targets.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        return Err(e
                            .with_context("cluster", &self.inner.cluster)
                            .with_context("nodes", targets.join(",")));
                    }
                }
            }
        }
        Ok(())
    }

    /// One `TerminateInstances`, `StopInstances` or `StartInstances` call on `ids`.
    pub(super) async fn act(&self, op: &'static str, action: Action, ids: &[String]) -> Result<()> {
        let ids = Some(ids.to_vec());
        let client = self.ec2();
        match action {
            Action::Terminate => {
                let request = client.terminate_instances().set_instance_ids(ids);
                self.call(op, "TerminateInstances", || request.clone().send())
                    .await
                    .map(drop)
            }
            Action::Stop => {
                let request = client.stop_instances().set_instance_ids(ids);
                self.call(op, "StopInstances", || request.clone().send())
                    .await
                    .map(drop)
            }
            Action::Start => {
                let request = client.start_instances().set_instance_ids(ids);
                self.call(op, "StartInstances", || request.clone().send())
                    .await
                    .map(drop)
            }
        }
    }
}

/// Splits live instances into those to stop and those to terminate: with caching,
/// pending and running on-demand instances are stopped, spot instances terminated, and
/// stopping or stopped ones left alone; without, all are terminated.
pub(super) fn split_for_cache(live: &BTreeMap<String, Instance>, cache: bool) -> (Vec<String>, Vec<String>) {
    if !cache {
        return (Vec::new(), live.keys().cloned().collect());
    }
    let mut stop = Vec::new();
    let mut terminate = Vec::new();
    for (id, instance) in live {
        let state = instance.state().and_then(|s| s.name());
        if matches!(
            state,
            Some(InstanceStateName::Stopping | InstanceStateName::Stopped)
        ) {
            continue;
        }
        if instance.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
            terminate.push(id.clone());
        } else {
            stop.push(id.clone());
        }
    }
    (stop, terminate)
}

/// An instance call of [`AwsNodeProvider::act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Terminate,
    Stop,
    Start,
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::InstanceState;

    use super::*;

    fn instance(id: &str, state: InstanceStateName, spot: bool) -> Instance {
        let mut b = Instance::builder()
            .instance_id(id)
            .state(InstanceState::builder().name(state).build());
        if spot {
            b = b.instance_lifecycle(InstanceLifecycleType::Spot);
        }
        b.build()
    }

    #[test]
    fn caching_stops_on_demand_instances_and_terminates_spot_ones() {
        let live: BTreeMap<String, Instance> = [
            instance("i-run", InstanceStateName::Running, false),
            instance("i-pending", InstanceStateName::Pending, false),
            instance("i-spot", InstanceStateName::Running, true),
            instance("i-stopped", InstanceStateName::Stopped, false),
            instance("i-stopping", InstanceStateName::Stopping, false),
        ]
        .into_iter()
        .map(|i| (i.instance_id().unwrap().to_string(), i))
        .collect();
        let (stop, terminate) = split_for_cache(&live, true);
        assert_eq!(stop, ["i-pending", "i-run"]);
        assert_eq!(terminate, ["i-spot"]);
        let (stop, terminate) = split_for_cache(&live, false);
        assert!(stop.is_empty());
        assert_eq!(terminate.len(), 5);
    }
}
