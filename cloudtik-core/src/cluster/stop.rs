//! `stop`: the user's and the runtimes' stop commands, then terminating the nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ManagedCluster;
use crate::command::{CommandRunner, CommandSpec};
use crate::config::CommandPhase;
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind, NodeStatus};
use crate::operations::StopOptions;
use crate::provider::NodeProvider;
use crate::runtime::NodeRuntimes;

impl ManagedCluster {
    pub(super) async fn stop_nodes(&self, options: &StopOptions) -> Result<()> {
        let nodes = self.nodes().await?;
        let head = nodes.iter().find(|n| n.kind() == Some(NodeKind::Head)).cloned();
        if !options.workers_only
            && let Some(h) = &head
        {
            // The controller first, so it replaces no worker we terminate.
            self.progress("stopping the head's services");
            if let Ok(r) = self.runner_for(h, Some(h)).await {
                let spec = CommandSpec::new(self.layout().stop_service_command("head"))
                    .timeout(Some(Duration::from_secs(40)));
                if let Err(e) = r.run(&spec).await {
                    tracing::warn!(error = %crate::Report(&e), "stopping the head's services failed; terminating anyway");
                }
            }
        }
        let mut workers: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.kind() != Some(NodeKind::Head))
            .cloned()
            .collect();
        if options.keep_min_workers {
            let mut kept: BTreeMap<String, u32> = BTreeMap::new();
            workers.sort_by_key(|n| n.status() != Some(NodeStatus::UpToDate));
            workers.retain(|n| {
                let t = n.node_type().unwrap_or_default().to_string();
                let min = self.config.min_workers_of(&t);
                let k = kept.entry(t).or_insert(0);
                if *k < min {
                    *k += 1;
                    false
                } else {
                    true
                }
            });
        }
        let mut doomed = workers.clone();
        if !options.workers_only {
            doomed.extend(head.clone());
        }
        if !options.hard {
            let mut runs = tokio::task::JoinSet::new();
            for n in &doomed {
                let kind = n.kind().unwrap_or(NodeKind::Worker);
                let node_type = n.node_type().unwrap_or_default();
                let mut commands = self.config.commands(CommandPhase::Stop, kind, node_type);
                let runtimes = NodeRuntimes::of(&self.settings.runtimes, &self.config, node_type);
                commands.extend(runtimes.commands(kind).stop);
                if commands.is_empty() {
                    continue;
                }
                let mut env = runtimes.environment(kind)?;
                env.insert(
                    crate::runtime::node::NODE_BINARY_ENV.to_string(),
                    self.settings.node_binary.clone(),
                );
                let Ok(runner) = self.runner_for(n, head.as_ref()).await else {
                    continue;
                };
                let id = n.id.clone();
                runs.spawn(async move {
                    for c in commands {
                        let spec = CommandSpec::new(c)
                            .envs(env.clone())
                            .timeout(Some(Duration::from_secs(60)));
                        if let Err(e) = runner.run(&spec).await {
                            tracing::warn!(node = %id, error = %crate::Report(&e), "a stop command failed");
                        }
                    }
                });
            }
            while runs.join_next().await.is_some() {}
        }
        self.runners.lock().await.clear();
        *self.store.lock().await = None;
        let ids: Vec<String> = doomed.iter().map(|n| n.id.clone()).collect();
        if !ids.is_empty() {
            self.progress(format!("terminating {} node(s)", ids.len()));
            self.provider.terminate_nodes(&ids).await?;
        }
        // Check by listing that none is left.
        let left: Vec<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| ids.contains(&n.id))
            .map(|n| n.id)
            .collect();
        if !left.is_empty() {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "nodes still listed after terminate: {}; run stop again",
                    left.join(", ")
                ),
            ));
        }
        if !options.workers_only {
            // Containers (or instances) of nodes stopped from outside, which no listing
            // shows: the user is tearing the cluster down, so they go too.
            match self.provider.remove_stopped_nodes().await {
                Ok(0) => {}
                Ok(n) => self.progress(format!("removed {n} node(s) stopped from outside")),
                Err(e) => return Err(e),
            }
            self.settings.dir.clear_head_launch();
            if !options.keep_secrets && self.nodes().await?.is_empty() {
                self.forget_secrets()?;
            }
        }
        Ok(())
    }
}
