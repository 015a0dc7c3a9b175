//! [`DockerRunner`]: container execution mode, on top of another runner.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{CommandOutput, CommandRunner, CommandRunnerExt, CommandSpec, RunEnv, SyncOptions, shell_quote};
use crate::config::DockerConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::node::NodeKind;

/// The node's container: what [`DockerRunner::start_container`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerSpec {
    /// The container's name.
    pub name: String,
    /// The image.
    pub image: String,
    /// Bind mounts, `(host path, container path)`; host paths absolute.
    pub mounts: Vec<(String, String)>,
    /// Capabilities added with `--cap-add`.
    pub capabilities: Vec<String>,
    /// Extra `docker run` options, as they are.
    pub run_options: Vec<String>,
    /// Run with `--network=host --ipc=host` (CloudTik does).
    pub host_network: bool,
    /// `docker pull` before `docker run` (`pull_before_run`).
    pub pull_before_run: bool,
    /// Grace period of `docker stop` before the container is killed.
    pub stop_timeout: Duration,
    /// The docker command on the host (`docker`, `sudo docker`, `podman`).
    pub docker_command: String,
    /// Host directory for files on their way into or out of the container.
    pub staging_dir: String,
}

impl ContainerSpec {
    /// A container `name` of `image` with CloudTik's defaults: capabilities `SYS_ADMIN`,
    /// `NET_ADMIN` and `SYS_NICE`, host network, pull before run, 10 s stop grace,
    /// staging under `/tmp/cloudtik-docker-staging/<name>`.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        let name = name.into();
        ContainerSpec {
            staging_dir: format!("/tmp/cloudtik-docker-staging/{name}"),
            name,
            image: image.into(),
            mounts: Vec::new(),
            capabilities: vec!["SYS_ADMIN".into(), "NET_ADMIN".into(), "SYS_NICE".into()],
            run_options: Vec::new(),
            host_network: true,
            pull_before_run: true,
            stop_timeout: Duration::from_secs(10),
            docker_command: "docker".into(),
        }
    }

    /// The container of a node of `kind` from the cluster's `docker` section: the head's
    /// or workers' image and run options where set.
    pub fn from_config(config: &DockerConfig, kind: NodeKind) -> Result<Self> {
        let image = match kind {
            NodeKind::Head => config.head_image.as_ref(),
            _ => config.worker_image.as_ref(),
        }
        .or(config.image.as_ref())
        .ok_or_else(|| Error::config("docker.image", "container mode needs an image"))?;
        let name = config
            .container_name
            .clone()
            .unwrap_or_else(|| "cloudtik-node".into());
        let mut spec = ContainerSpec::new(name, image.clone());
        spec.run_options = config.run_options.clone();
        spec.run_options.extend(
            match kind {
                NodeKind::Head => &config.head_run_options,
                _ => &config.worker_run_options,
            }
            .iter()
            .cloned(),
        );
        spec.pull_before_run = config.pull_before_run.unwrap_or(true);
        Ok(spec)
    }

    /// Adds a bind mount.
    #[must_use]
    pub fn with_mount(mut self, host: impl Into<String>, container: impl Into<String>) -> Self {
        self.mounts.push((host.into(), container.into()));
        self
    }

    /// Sets the capabilities.
    #[must_use]
    pub fn with_capabilities<S: Into<String>>(mut self, caps: impl IntoIterator<Item = S>) -> Self {
        self.capabilities = caps.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the extra run options.
    #[must_use]
    pub fn with_run_options<S: Into<String>>(mut self, opts: impl IntoIterator<Item = S>) -> Self {
        self.run_options = opts.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `host_network`.
    #[must_use]
    pub fn with_host_network(mut self, yes: bool) -> Self {
        self.host_network = yes;
        self
    }

    /// Sets `pull_before_run`.
    #[must_use]
    pub fn with_pull_before_run(mut self, yes: bool) -> Self {
        self.pull_before_run = yes;
        self
    }

    /// Sets the stop grace period.
    #[must_use]
    pub fn with_stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = d;
        self
    }

    /// Sets the staging directory on the host.
    #[must_use]
    pub fn with_staging_dir(mut self, dir: impl Into<String>) -> Self {
        self.staging_dir = dir.into();
        self
    }

    /// The `docker run` command line that starts the container. It runs detached and
    /// removed when stopped (`--rm`), with `--init` so `docker stop` ends it at once,
    /// keeping it alive with a sleeping shell loop.
    pub fn run_command(&self) -> String {
        let mut parts = vec![
            self.docker_command.clone(),
            "run".into(),
            "-d".into(),
            "--rm".into(),
            "--init".into(),
            "--name".into(),
            shell_quote(&self.name),
        ];
        if self.host_network {
            parts.extend(["--network=host".to_string(), "--ipc=host".to_string()]);
        }
        for c in &self.capabilities {
            parts.push(format!("--cap-add={}", shell_quote(c)));
        }
        for (h, c) in &self.mounts {
            parts.push("-v".into());
            parts.push(shell_quote(&format!("{h}:{c}")));
        }
        parts.extend(self.run_options.iter().cloned());
        parts.push(shell_quote(&self.image));
        parts.extend([
            "sh".into(),
            "-c".into(),
            shell_quote("while :; do sleep 86400; done"),
        ]);
        parts.join(" ")
    }

    fn mounts_signature(&self) -> Vec<String> {
        let mut v: Vec<String> = self.mounts.iter().map(|(h, c)| format!("{h}:{c}")).collect();
        v.sort();
        v
    }
}

/// What [`DockerRunner::start_container`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStart {
    /// The container was running with the wanted image and mounts; nothing was done.
    AlreadyRunning,
    /// No container was running; one was started.
    Started,
    /// A container ran with another image or other mounts; it was replaced.
    Restarted,
}

/// Runs a node's commands in its container (CloudTik's container execution mode).
///
/// It wraps the runner of the node's host (SSH, or local for nodes on this machine).
/// Commands go to the container with `docker exec` or to the host, as
/// [`RunEnv`] says: `auto` runs `docker ...` commands and empty commands on the host and
/// everything else in the container. Environment variables reach the container by name
/// (`docker exec -e NAME`), so their values are never on a command line.
///
/// Files move in two hops: to a staging directory on the host (rsync, with excludes),
/// then `docker cp` into the container; downloads the other way round.
///
/// A command that times out is killed on the host side (the `docker exec` client); a
/// process it left in the container stops with the container.
#[derive(Debug, Clone)]
pub struct DockerRunner {
    host: Arc<dyn CommandRunner>,
    spec: ContainerSpec,
}

impl DockerRunner {
    /// A runner for the container `spec` on the host reached by `host`.
    pub fn new(host: Arc<dyn CommandRunner>, spec: ContainerSpec) -> Self {
        DockerRunner { host, spec }
    }

    /// The container.
    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    /// The runner of the host.
    pub fn host_runner(&self) -> &Arc<dyn CommandRunner> {
        &self.host
    }

    fn docker(&self) -> &str {
        &self.spec.docker_command
    }

    async fn host_checked(&self, command: String) -> Result<CommandOutput> {
        self.host
            .run_checked(&CommandSpec::new(command).run_env(RunEnv::Host))
            .await
    }

    /// Starts the container unless it runs with the wanted image and mounts (then
    /// nothing happens); replaces one that runs with another image or other mounts.
    /// Pulls the image first when `pull_before_run`.
    pub async fn start_container(&self) -> Result<ContainerStart> {
        let d = self.docker();
        let check = self
            .host
            .run(
                &CommandSpec::new(format!(
                    "command -v {} >/dev/null 2>&1",
                    d.split_whitespace().last().unwrap_or("docker")
                ))
                .run_env(RunEnv::Host),
            )
            .await?;
        if !check.success() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("`{d}` is not installed on {}", self.host.describe()),
            ));
        }
        let name = shell_quote(&self.spec.name);
        let inspect = self
            .host
            .run(
                &CommandSpec::new(format!(
                    "{d} inspect -f '{{{{.State.Running}}}}|{{{{.Config.Image}}}}|{{{{range .Mounts}}}}{{{{.Source}}}}:{{{{.Destination}}}};{{{{end}}}}' {name}"
                ))
                .run_env(RunEnv::Host),
            )
            .await?;
        let mut existed = false;
        if inspect.success() {
            existed = true;
            let line = inspect.stdout.trim();
            let mut parts = line.splitn(3, '|');
            let running = parts.next() == Some("true");
            let image = parts.next().unwrap_or("");
            let mut mounts: Vec<String> = parts
                .next()
                .unwrap_or("")
                .split(';')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            mounts.sort();
            if running && image == self.spec.image && mounts == self.spec.mounts_signature() {
                return Ok(ContainerStart::AlreadyRunning);
            }
            tracing::info!(
                target: "cloudtik::command",
                container = %self.spec.name,
                running, old_image = image, new_image = %self.spec.image,
                "replacing the container: image or mounts changed"
            );
            self.host_checked(format!("{d} rm -f {name} >/dev/null")).await?;
        }
        if self.spec.pull_before_run {
            self.host_checked(format!("{d} pull {}", shell_quote(&self.spec.image)))
                .await?;
        }
        for (h, _) in &self.spec.mounts {
            self.host_checked(format!("mkdir -p {}", shell_quote(h))).await?;
        }
        self.host_checked(self.spec.run_command()).await?;
        Ok(if existed {
            ContainerStart::Restarted
        } else {
            ContainerStart::Started
        })
    }

    /// Stops the container (it is removed as it was started with `--rm`). Stopping a
    /// container that does not run succeeds.
    pub async fn stop_container(&self) -> Result<()> {
        let d = self.docker();
        let name = shell_quote(&self.spec.name);
        let secs = self.spec.stop_timeout.as_secs();
        self.host_checked(format!(
            "if {d} inspect {name} >/dev/null 2>&1; then {d} stop -t {secs} {name} >/dev/null; {d} rm -f {name} >/dev/null 2>&1 || true; fi"
        ))
        .await
        .map(|_| ())
    }

    /// True when the container runs.
    pub async fn container_running(&self) -> Result<bool> {
        let out = self
            .host
            .run(
                &CommandSpec::new(format!(
                    "{} inspect -f '{{{{.State.Running}}}}' {}",
                    self.docker(),
                    shell_quote(&self.spec.name)
                ))
                .run_env(RunEnv::Host),
            )
            .await?;
        Ok(out.success() && out.stdout.trim() == "true")
    }

    fn runs_on_host(spec: &CommandSpec) -> bool {
        match spec.run_env {
            RunEnv::Host => true,
            RunEnv::Docker => false,
            RunEnv::Auto => {
                let c = spec.command.trim_start();
                c.trim().is_empty() || c == "docker" || c.starts_with("docker ")
            }
        }
    }

    /// The docker command that passes the variables `keys` of its environment on. sudo
    /// resets the environment (`env_reset`, the default everywhere), so `sudo docker
    /// exec -e NAME` would give the container no NAME: with a `sudo` docker command the
    /// names are kept with `sudo --preserve-env=NAME,...` (allowed to users whose sudo
    /// rule is `ALL`, as cloud images' default users have; values stay off the command
    /// line).
    fn docker_passing_env<'a>(&self, keys: impl IntoIterator<Item = &'a String>) -> String {
        let d = self.docker();
        let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
        match d.strip_prefix("sudo ") {
            Some(rest) if !keys.is_empty() => format!("sudo --preserve-env={} {rest}", keys.join(",")),
            _ => d.to_string(),
        }
    }

    /// `docker exec` of `script` in the container (env passed by name).
    fn exec_spec(&self, spec: &CommandSpec, script: &str) -> CommandSpec {
        let mut cmd = format!("{} exec", self.docker_passing_env(spec.env.keys()));
        for k in spec.env.keys() {
            cmd.push_str(" -e ");
            cmd.push_str(&shell_quote(k));
        }
        cmd.push(' ');
        cmd.push_str(&shell_quote(&self.spec.name));
        cmd.push_str(" sh -c ");
        cmd.push_str(&shell_quote(script));
        CommandSpec {
            command: cmd,
            env: spec.env.clone(),
            timeout: spec.timeout,
            run_env: RunEnv::Host,
            stream_to: spec.stream_to.clone(),
        }
    }

    /// `remote` with a leading `~` replaced by the container's `$HOME`.
    async fn container_path(&self, remote: &str) -> Result<String> {
        if remote != "~" && !remote.starts_with("~/") {
            return Ok(remote.to_string());
        }
        let out = self
            .host
            .run_checked(&self.exec_spec(&CommandSpec::new(""), "printf %s \"$HOME\""))
            .await?;
        Ok(format!("{}{}", out.stdout.trim_end_matches('/'), &remote[1..]))
    }

    fn staging_path(&self) -> String {
        format!(
            "{}/{}",
            self.spec.staging_dir.trim_end_matches('/'),
            uuid::Uuid::new_v4().simple()
        )
    }
}

#[async_trait]
impl CommandRunner for DockerRunner {
    fn describe(&self) -> String {
        format!("container {} on {}", self.spec.name, self.host.describe())
    }

    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput> {
        if Self::runs_on_host(spec) {
            return self.host.run(spec).await;
        }
        tracing::debug!(target: "cloudtik::command", runner = %self.describe(), command = %spec.masked_command(), "run");
        self.host.run(&self.exec_spec(spec, &spec.command)).await
    }

    async fn upload(&self, local: &Path, remote: &str, options: &SyncOptions) -> Result<()> {
        let is_dir = local.is_dir();
        let staging = self.staging_path();
        self.host.upload(local, &staging, options).await?;
        let target = self.container_path(remote).await?;
        let d = self.docker();
        let name = shell_quote(&self.spec.name);
        let mkdir = if is_dir {
            target.clone()
        } else {
            Path::new(&target)
                .parent()
                .map_or_else(|| ".".to_string(), |p| p.display().to_string())
        };
        let src = if is_dir {
            format!("{staging}/.")
        } else {
            staging.clone()
        };
        let result = self
            .host_checked(format!(
                "{d} exec {name} mkdir -p {} && {d} cp {} {name}:{}",
                shell_quote(&mkdir),
                shell_quote(&src),
                shell_quote(&target)
            ))
            .await;
        let _ = self
            .host_checked(format!("rm -rf {}", shell_quote(&staging)))
            .await;
        result.map(|_| ())
    }

    async fn download(&self, remote: &str, local: &Path, options: &SyncOptions) -> Result<()> {
        let source = self.container_path(remote).await?;
        let d = self.docker();
        let name = shell_quote(&self.spec.name);
        let is_dir = self
            .host
            .run(
                &CommandSpec::new(format!("{d} exec {name} test -d {}", shell_quote(&source)))
                    .run_env(RunEnv::Host),
            )
            .await?
            .success();
        let staging = self.staging_path();
        let src = if is_dir {
            format!("{source}/.")
        } else {
            source.clone()
        };
        let copied = self
            .host_checked(format!(
                "mkdir -p {} && {d} cp {name}:{} {}",
                shell_quote(&if is_dir {
                    staging.clone()
                } else {
                    super::remote_parent(&staging)
                }),
                shell_quote(&src),
                shell_quote(&staging)
            ))
            .await;
        let result = match copied {
            Ok(_) => self.host.download(&staging, local, options).await,
            Err(e) => Err(e),
        };
        let _ = self
            .host_checked(format!("rm -rf {}", shell_quote(&staging)))
            .await;
        result
    }

    async fn forward_port(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()> {
        // The container shares the host's network (`--network=host`): forward on the host.
        self.host.forward_port(local_port, remote_host, remote_port).await
    }

    async fn close_port_forward(&self, local_port: u16, remote_host: &str, remote_port: u16) -> Result<()> {
        self.host
            .close_port_forward(local_port, remote_host, remote_port)
            .await
    }

    async fn close(&self) -> Result<()> {
        self.host.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_env_auto_sends_docker_commands_to_the_host() {
        assert!(DockerRunner::runs_on_host(&CommandSpec::new("docker ps")));
        assert!(DockerRunner::runs_on_host(&CommandSpec::new("  ")));
        assert!(!DockerRunner::runs_on_host(&CommandSpec::new("dockerd-ish")));
        assert!(!DockerRunner::runs_on_host(&CommandSpec::new("echo hi")));
        assert!(DockerRunner::runs_on_host(
            &CommandSpec::new("echo hi").run_env(RunEnv::Host)
        ));
        assert!(!DockerRunner::runs_on_host(
            &CommandSpec::new("docker ps").run_env(RunEnv::Docker)
        ));
    }

    #[test]
    fn env_names_survive_sudo() {
        let host: Arc<dyn CommandRunner> = Arc::new(crate::command::LocalRunner::new());
        let mut spec = ContainerSpec::new("c", "img:1");
        spec.docker_command = "sudo -n docker".into();
        let runner = DockerRunner::new(host.clone(), spec);
        let cmd = CommandSpec::new("echo $A").env("A", "1").env("B_2", "2");
        let exec = runner.exec_spec(&cmd, &cmd.command);
        assert!(
            exec.command
                .starts_with("sudo --preserve-env=A,B_2 -n docker exec -e A -e B_2 c sh -c "),
            "{}",
            exec.command
        );
        // No variables: no --preserve-env; no sudo: as it is.
        let plain = runner.exec_spec(&CommandSpec::new("true"), "true");
        assert!(
            plain.command.starts_with("sudo -n docker exec c "),
            "{}",
            plain.command
        );
        let runner = DockerRunner::new(host, ContainerSpec::new("c", "img:1"));
        let exec = runner.exec_spec(&cmd, &cmd.command);
        assert!(
            exec.command.starts_with("docker exec -e A -e B_2 c "),
            "{}",
            exec.command
        );
    }

    #[test]
    fn spec_from_config_picks_the_kind_s_image_and_options() {
        let cfg = DockerConfig {
            enabled: true,
            image: Some("base:1".into()),
            worker_image: Some("worker:1".into()),
            run_options: vec!["--ulimit nofile=65536:65536".into()],
            worker_run_options: vec!["--cpus=2".into()],
            pull_before_run: Some(false),
            ..Default::default()
        };
        let head = ContainerSpec::from_config(&cfg, NodeKind::Head).unwrap();
        assert_eq!(head.image, "base:1");
        assert_eq!(head.run_options.len(), 1);
        let worker = ContainerSpec::from_config(&cfg, NodeKind::Worker).unwrap();
        assert_eq!(worker.image, "worker:1");
        assert_eq!(
            worker.run_options,
            vec!["--ulimit nofile=65536:65536", "--cpus=2"]
        );
        assert!(!worker.pull_before_run);
        let cmd = worker.run_command();
        assert!(cmd.contains("--cap-add=SYS_ADMIN"), "{cmd}");
        assert!(cmd.contains("--network=host"), "{cmd}");
        let err = ContainerSpec::from_config(&DockerConfig::default(), NodeKind::Head).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    }
}
