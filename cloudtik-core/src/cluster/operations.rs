//! The [`Cluster`] operations of a [`ManagedCluster`].

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::{ManagedCluster, now_secs, resource_request};
use crate::command::{CommandRunner, CommandSpec, SyncOptions, shell_quote};
use crate::config::ClusterConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind, NodeStatus};
use crate::operations::{
    Cluster, ClusterStatus, ExecOptions, ExecResult, NodeTarget, ScaleRequest, StartOptions, StopOptions,
};
use crate::provider::NodeProvider;
use crate::runtime::NodeRuntimes;
use crate::state::{ResourceRequest, StateStore};

#[async_trait]
impl Cluster for ManagedCluster {
    fn config(&self) -> &ClusterConfig {
        &self.config
    }

    async fn start(&self, options: &StartOptions) -> Result<()> {
        let span = tracing::info_span!("cluster_start", cluster = %self.config.cluster_name);
        tracing::Instrument::instrument(self.start_head(options), span).await
    }

    async fn stop(&self, options: &StopOptions) -> Result<()> {
        let span = tracing::info_span!("cluster_stop", cluster = %self.config.cluster_name);
        tracing::Instrument::instrument(self.stop_nodes(options), span).await
    }

    async fn status(&self) -> Result<ClusterStatus> {
        self.cluster_status().await
    }

    async fn exec(&self, command: &str, options: &ExecOptions) -> Result<Vec<ExecResult>> {
        let (nodes, head) = self.targets(&options.target).await?;
        let command = if options.tmux {
            format!(
                "tmux new -d -s cloudtik-{} {}",
                now_secs() as u64,
                shell_quote(&format!("{command}; exec bash"))
            )
        } else if options.screen {
            format!(
                "screen -dmS cloudtik-{} bash -c {}",
                now_secs() as u64,
                shell_quote(&format!("{command}; exec bash"))
            )
        } else {
            command.to_string()
        };
        let mut runs = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let runner = self.runner_for(n, head.as_ref()).await?;
            // The node's runtimes' environment: their programs on the PATH (`python3`
            // with pyspark or ray importable), their homes.
            let kind = n.kind().unwrap_or(NodeKind::Worker);
            let env = NodeRuntimes::of(
                &self.settings.runtimes,
                &self.config,
                n.node_type().unwrap_or_default(),
            )
            .environment(kind)?;
            let mut spec = CommandSpec::new(command.clone())
                .envs(env)
                .timeout(options.timeout);
            if let Some(tx) = &options.output {
                spec = spec.stream_to(tx.clone());
            }
            let node = n.clone();
            runs.spawn(async move {
                let out = runner.run(&spec).await;
                (i, node, out)
            });
        }
        let mut results: Vec<(usize, ExecResult)> = Vec::new();
        while let Some(joined) = runs.join_next().await {
            let (i, node, out) = joined
                .map_err(|e| Error::new(ErrorKind::Unexpected, "an exec task failed").with_source(e))?;
            let out = out.map_err(|e| e.with_context("node", &node.id))?;
            results.push((
                i,
                ExecResult {
                    node_id: node.id,
                    node_ip: node.internal_ip,
                    exit_code: out.exit_code,
                    stdout: out.stdout,
                    stderr: out.stderr,
                },
            ));
        }
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }

    async fn rsync_up(&self, local: &Path, remote: &str, target: &NodeTarget) -> Result<()> {
        let (nodes, head) = self.targets(target).await?;
        let options = SyncOptions::default()
            .with_exclude(self.config.rsync_exclude.iter().cloned())
            .with_filter(self.config.rsync_filter.iter().cloned());
        for n in &nodes {
            let runner = self.runner_for(n, head.as_ref()).await?;
            runner
                .upload(local, remote, &options)
                .await
                .map_err(|e| e.with_context("node", &n.id))?;
        }
        Ok(())
    }

    async fn rsync_down(&self, remote: &str, local: &Path, target: &NodeTarget) -> Result<()> {
        let (nodes, head) = self.targets(target).await?;
        let n = &nodes[0];
        let runner = self.runner_for(n, head.as_ref()).await?;
        runner
            .download(remote, local, &SyncOptions::default())
            .await
            .map_err(|e| e.with_context("node", &n.id))
    }

    async fn scale(&self, request: &ScaleRequest) -> Result<()> {
        let r = resource_request(&self.config, request)?;
        let store = self.store().await?;
        if request.up_only && !r.override_all {
            // Up only: a group is sent only where it asks for more than stands now.
            let standing = store.resource_requests().await?;
            let mut kept = Vec::new();
            for (id, bundles) in r.grouped() {
                let now = standing.by_id.get(&id).map_or(0, Vec::len);
                if bundles.len() > now {
                    kept.extend(
                        r.requests
                            .iter()
                            .filter(|b| crate::state::resource_id(b) == id)
                            .cloned(),
                    );
                }
            }
            if kept.is_empty() {
                self.progress("the cluster already requests at least this much (--up-only)");
                return Ok(());
            }
            let r = ResourceRequest { requests: kept, ..r };
            return store.submit_resource_request(&r).await;
        }
        store.submit_resource_request(&r).await
    }

    async fn head_ip(&self) -> Result<Option<String>> {
        let head = self.require_head().await?;
        Ok(if self.use_internal_ips() {
            head.internal_ip
        } else {
            head.external_ip.or(head.internal_ip)
        })
    }

    async fn worker_ips(&self) -> Result<Vec<String>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.kind() != Some(NodeKind::Head))
            .filter_map(|n| n.internal_ip)
            .collect())
    }

    async fn kill_node(&self, target: &NodeTarget) -> Result<()> {
        let (nodes, _) = match target {
            NodeTarget::Ip(_) => self.targets(target).await?,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "say which node to kill by its IP (--node-ip)",
                ));
            }
        };
        for n in &nodes {
            if n.kind() == Some(NodeKind::Head) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "{} is the head: stop the cluster with `cloudtik stop` instead",
                        n.id
                    ),
                ));
            }
        }
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        self.runners.lock().await.retain(|id, _| !ids.contains(id));
        self.provider.terminate_nodes(&ids).await
    }

    async fn wait_for_ready(&self, min_workers: u32, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let nodes = self.nodes().await?;
            let ready = |n: &NodeInfo| n.status() == Some(NodeStatus::UpToDate);
            let head_ready = nodes.iter().any(|n| n.kind() == Some(NodeKind::Head) && ready(n));
            let workers: Vec<&NodeInfo> = nodes
                .iter()
                .filter(|n| n.kind() != Some(NodeKind::Head) && ready(n))
                .collect();
            let mut heartbeating = 0;
            if head_ready && workers.len() >= min_workers as usize {
                *self.store.lock().await = None;
                if let Ok(store) = self.store().await {
                    let hbs = store.all_heartbeats().await.unwrap_or_default();
                    heartbeating = workers
                        .iter()
                        .filter(|w| {
                            hbs.get(&w.id)
                                .is_some_and(|h| !h.is_lost(now_secs(), self.settings.heartbeat_timeout))
                        })
                        .count();
                    if heartbeating >= min_workers as usize {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "after {timeout:?}: head {}, {} of {min_workers} workers up to date ({heartbeating} \
                         heartbeating); see `cloudtik status` and `cloudtik monitor`",
                        if head_ready {
                            "up to date"
                        } else {
                            "not up to date"
                        },
                        workers.len()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
