//! `start`: launching the head (once, with a recorded launch token), setting it up and
//! waiting for its services.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{
    ClusterSecrets, DEFAULT_REDIS_PORT, HeadBootstrap, ManagedCluster, env, local_dir, now_secs,
    pinned_ssh_options,
};
use crate::command::SshRunner;
use crate::config::{ClusterConfig, launch_hash};
use crate::error::{Error, ErrorKind, Result};
use crate::node::{NodeInfo, NodeKind, NodeStatus, Tags, tags};
use crate::operations::StartOptions;
use crate::provider::{LaunchRequest, NodeProvider, NodeProviderExt, new_launch_token};
use crate::runtime::NodeRuntimes;
use crate::state::{StateStore, StateStoreExt};
use crate::updater::{NodePackage, NodeRunners, NodeUpdater, UpdatePlan};

impl ManagedCluster {
    pub(super) fn head_launch_tags(&self, hash: &str) -> Tags {
        let mut t = Tags::new();
        t.insert(tags::NODE_KIND.into(), NodeKind::Head.as_str().into());
        t.insert(tags::USER_NODE_TYPE.into(), self.config.head_node_type.clone());
        t.insert(
            tags::NODE_STATUS.into(),
            NodeStatus::Uninitialized.as_str().into(),
        );
        t.insert(tags::LAUNCH_CONFIG.into(), hash.into());
        t.insert(
            tags::NODE_NAME.into(),
            format!("cloudtik-{}-head", self.config.cluster_name),
        );
        t
    }

    pub(super) async fn launch_head(&self, node_config: Value, hash: &str) -> Result<NodeInfo> {
        let token = self
            .settings
            .dir
            .head_launch_token()
            .unwrap_or_else(new_launch_token);
        self.settings.dir.record_head_launch(&token)?;
        self.progress("launching the head node");
        let resources = self
            .config
            .available_node_types
            .get(&self.config.head_node_type)
            .and_then(|t| t.resources.clone())
            .unwrap_or_default();
        let request = LaunchRequest::new(
            self.config.head_node_type.clone(),
            node_config,
            self.head_launch_tags(hash),
            1,
        )
        .with_token(token)
        .with_resources(resources);
        let outcome = self
            .provider
            .create_nodes(&request)
            .await
            .map_err(|e| e.with_context("node", "head"))?;
        match outcome.nodes.into_iter().next() {
            Some(n) => Ok(n),
            None => Err(outcome.shortfall.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    "the provider launched no head node and said nothing",
                )
            })),
        }
    }

    pub(super) async fn wait_for_ip(&self, mut node: NodeInfo) -> Result<NodeInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while node.internal_ip.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the head {} got no IP address within 2 minutes", node.id),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            node =
                self.provider.node(&node.id).await?.ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, format!("the head {} is gone", node.id))
                })?;
        }
        Ok(node)
    }

    /// The head's config with the start options applied.
    pub(super) fn head_cluster_config(&self, options: &StartOptions) -> ClusterConfig {
        let mut c = self
            .settings
            .head_config
            .clone()
            .unwrap_or_else(|| self.config.clone());
        if let Some(min) = options.min_workers {
            for (name, t) in c.available_node_types.iter_mut() {
                if *name != c.head_node_type {
                    t.min_workers = Some(min);
                }
            }
        }
        if let Some(max) = options.max_workers {
            c.max_workers = Some(max);
        }
        // Paths as the head has them: the key pair it receives, and the file mounts at
        // the paths they were synced to on the head (CloudTik's rule: workers get their
        // file mounts from the head). The launch hash hashes key contents, not paths,
        // so the head computes the same hashes.
        let layout = self.layout();
        c.auth.ssh_private_key = Some(layout.private_key_file());
        if c.auth.ssh_public_key.is_some() {
            c.auth.ssh_public_key = Some(layout.public_key_file());
        }
        c.file_mounts = c.file_mounts.keys().map(|r| (r.clone(), r.clone())).collect();
        c
    }

    /// The files the head receives, in a temporary folder: node path -> local path.
    pub(super) fn head_files(
        &self,
        head: &NodeInfo,
        options: &StartOptions,
        secrets: &ClusterSecrets,
        tmp: &Path,
    ) -> Result<BTreeMap<String, std::path::PathBuf>> {
        let layout = self.layout();
        let io = |e: std::io::Error| {
            Error::new(ErrorKind::Unexpected, "cannot write the head's files").with_source(e)
        };
        let mut files = BTreeMap::new();
        let cluster = tmp.join("cluster.json");
        let json = serde_json::to_vec_pretty(&self.head_cluster_config(options)).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot serialize the cluster config").with_source(e)
        })?;
        std::fs::write(&cluster, json).map_err(io)?;
        files.insert(layout.cluster_file(), cluster);

        let snapshots = crate::runtime::snapshot::snapshots(&self.settings.runtimes, &self.config);
        if !snapshots.is_empty() {
            let runtimes = tmp.join("runtimes.json");
            let json = serde_json::to_vec_pretty(&snapshots).map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot serialize the runtimes").with_source(e)
            })?;
            std::fs::write(&runtimes, json).map_err(io)?;
            files.insert(layout.runtimes_file(), runtimes);
        }

        let boot = HeadBootstrap {
            cluster_name: Some(self.config.cluster_name.clone()),
            head_ip: head.internal_ip.clone(),
            redis_port: Some(DEFAULT_REDIS_PORT),
            redis_password: Some(secrets.redis_password.clone()),
            encryption_key: Some(secrets.encryption_key.clone()),
            head_node_type: Some(self.config.head_node_type.clone()),
            cluster_config: Some(layout.cluster_file().into()),
            ssh_private_key: Some(layout.private_key_file().into()),
            ssh_public_key: Some(layout.public_key_file().into()),
            known_hosts: Some(layout.known_hosts_file().into()),
            node_binary: Some(self.settings.node_binary.clone()),
            install_node_program: self.settings.bootstrap.is_some().then_some(true),
            controller_interval_s: Some(self.settings.controller_interval.as_secs_f64()),
            heartbeat_timeout_s: Some(self.settings.heartbeat_timeout.as_secs_f64()),
            ..Default::default()
        };
        let boot_file = tmp.join("bootstrap.yaml");
        let text = serde_yaml_ng::to_string(&boot).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot serialize the bootstrap config").with_source(e)
        })?;
        local_dir::write_private(&boot_file, text.as_bytes())?;
        files.insert(layout.bootstrap_file(), boot_file);

        let private = self.ssh_options()?.private_key;
        let key = tmp.join("cluster_key");
        let bytes = std::fs::read(&private).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot read the private key {}", private.display()),
            )
            .with_source(e)
            .with_context("path", "auth.ssh_private_key")
        })?;
        local_dir::write_private(&key, &bytes)?;
        files.insert(layout.private_key_file(), key);
        if let Some(public) = &self.config.auth.ssh_public_key {
            let public = crate::config::hash::expand_home(public);
            let pub_file = tmp.join("cluster_key.pub");
            std::fs::copy(&public, &pub_file).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cannot read the public key {}", public.display()),
                )
                .with_source(e)
                .with_context("path", "auth.ssh_public_key")
            })?;
            files.insert(layout.public_key_file(), pub_file);
        }
        Ok(files)
    }

    pub(super) async fn update_head(&self, head: &NodeInfo, options: &StartOptions) -> Result<()> {
        let secrets = self.settings.dir.secrets()?;
        let tmp = tempfile::tempdir().map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot make a temporary folder").with_source(e)
        })?;
        let files = self.head_files(head, options, &secrets, tmp.path())?;
        let layout = self.layout();
        let mut plan = UpdatePlan::from_config(&self.config, NodeKind::Head, &self.config.head_node_type)?;
        // The generated files count in the file-mount hash: a changed config or new
        // secrets make setup run again (and the files go up again).
        let mut hasher_input = plan.file_mounts_contents_hash.clone();
        for (remote, local) in &files {
            hasher_input.push_str(remote);
            hasher_input.push_str(&hex::encode(sha1_of_file(local)?));
            plan.file_mounts.insert(remote.clone(), local.clone());
        }
        plan.file_mounts_contents_hash =
            hex::encode(<sha1::Sha1 as sha1::Digest>::digest(hasher_input.as_bytes()));
        if options.restart_only {
            plan.initialization_commands.clear();
            plan.setup_commands.clear();
        }
        let runtimes = NodeRuntimes::of(&self.settings.runtimes, &self.config, &self.config.head_node_type);
        crate::runtime::apply_to_plan(
            &mut plan,
            &runtimes,
            NodeKind::Head,
            vec![layout.head_start_command()],
            &self.settings.node_binary,
        )?;
        if options.restart_only {
            plan.setup_commands.clear();
        }
        if let Some(b) = &self.settings.bootstrap {
            // The head runs the state store (redis-server from the distribution) and calls
            // the cloud's API over TLS (the CA certificates).
            plan.bootstrap = Some(
                b.clone()
                    .with_package(NodePackage::new("redis-server"))
                    .with_package(NodePackage::ca_certificates()),
            );
        }
        if options.no_restart {
            plan.start_commands.clear();
        }
        plan.env.insert(env::NODE_ID.into(), head.id.clone());
        plan.env
            .insert(env::NODE_IP.into(), head.internal_ip.clone().unwrap_or_default());
        plan.env
            .insert(env::NODE_TYPE.into(), self.config.head_node_type.clone());
        plan.env
            .insert(env::HEAD_IP.into(), head.internal_ip.clone().unwrap_or_default());
        plan.env
            .insert(env::REDIS_PORT.into(), DEFAULT_REDIS_PORT.to_string());

        let address = self.ssh_address(head)?;
        let ssh = pinned_ssh_options(self.provider.as_ref(), head, self.ssh_options()?).await?;
        let config = self.config.clone();
        let factory = move |_: &NodeInfo| -> Result<NodeRunners> {
            let host: Arc<dyn crate::command::CommandRunner> =
                Arc::new(SshRunner::new(address.clone(), ssh.clone())?);
            super::container::node_runners(&config, NodeKind::Head, &config.head_node_type, host)
        };
        let mut updater_options = self.settings.updater.clone();
        if let Some(tx) = &self.settings.output {
            updater_options = updater_options.with_output(tx.clone());
        }
        self.progress("setting up the head node");
        NodeUpdater::new(
            self.provider.clone(),
            factory,
            head.id.clone(),
            plan,
            updater_options,
        )
        .update()
        .await?;
        Ok(())
    }

    pub(super) async fn start_head(&self, options: &StartOptions) -> Result<()> {
        let head_type = self
            .config
            .available_node_types
            .get(&self.config.head_node_type)
            .ok_or_else(|| Error::config("head_node_type", "names no entry of available_node_types"))?;
        let node_config = Value::Object(head_type.node_config.clone());
        let hash = launch_hash(&node_config, &self.config.auth)?;
        self.progress("looking for the head node");
        let heads = self.provider.list_nodes_of_kind(NodeKind::Head).await?;
        let mut head = None;
        for h in heads {
            if head.is_none() && h.tag(tags::LAUNCH_CONFIG) == Some(hash.as_str()) {
                head = Some(h);
            } else {
                self.progress(format!(
                    "terminating the head {} (its launch config changed or it is a duplicate)",
                    h.id
                ));
                self.provider.terminate_node(&h.id).await?;
            }
        }
        let unfinished = self.settings.dir.head_launch_token();
        let head = match head {
            // A launch of ours that was interrupted (the node may be created but not
            // started): make the same launch again, which finishes it.
            Some(h) if unfinished.is_some() && h.tag(tags::LAUNCH_TOKEN) == unfinished.as_deref() => {
                self.progress(format!(
                    "finishing the interrupted launch of the head node {}",
                    h.id
                ));
                self.launch_head(node_config, &hash).await?
            }
            Some(h) => {
                self.progress(format!("found the head node {}", h.id));
                h
            }
            None => self.launch_head(node_config, &hash).await?,
        };
        let head = self.wait_for_ip(head).await?;
        self.runners.lock().await.remove(&head.id);
        self.update_head(&head, options).await?;
        if !options.no_restart {
            self.wait_for_head_services(&head).await?;
        }
        self.settings.dir.clear_head_launch();
        self.progress(format!(
            "the head {} is up at {}",
            head.id,
            head.internal_ip.as_deref().unwrap_or("?")
        ));
        Ok(())
    }

    /// Waits until the head's state store answers, the head's agent heartbeats and a
    /// cluster controller holds a live controller lease.
    pub(super) async fn wait_for_head_services(&self, head: &NodeInfo) -> Result<()> {
        self.progress("waiting for the head's services");
        let deadline = tokio::time::Instant::now() + self.settings.head_ready_timeout;
        loop {
            *self.store.lock().await = None;
            let last = match self.store().await {
                Ok(store) => match store.heartbeat(&head.id).await {
                    Ok(Some(hb)) if !hb.is_lost(now_secs(), self.settings.heartbeat_timeout) => {
                        // The controller heartbeats through its lease.
                        match store.lease(crate::state::CONTROLLER_LEASE).await {
                            Ok(Some(l)) if !l.is_expired(now_secs()) => return Ok(()),
                            Ok(_) => Error::new(ErrorKind::Transient, "no cluster controller is acting yet"),
                            Err(e) => e,
                        }
                    }
                    Ok(_) => Error::new(ErrorKind::Transient, "no heartbeat from the head's agent yet"),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() > deadline {
                let layout = self.layout();
                let mut err = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the head's services did not come up within {:?}; see {} on the head \
                         (`cloudtik monitor`)",
                        self.settings.head_ready_timeout,
                        layout.head_log()
                    ),
                );
                err = err.with_context("last_error", last);
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

pub(super) fn sha1_of_file(path: &Path) -> Result<Vec<u8>> {
    use sha1::Digest;
    let bytes = std::fs::read(path).map_err(|e| {
        Error::new(ErrorKind::Unexpected, format!("cannot read {}", path.display())).with_source(e)
    })?;
    Ok(sha1::Sha1::digest(&bytes).to_vec())
}
